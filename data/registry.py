"""The published datasets: one entry each, holding every fact the code needs about it.

Adding a published dataset is one ``Dataset`` entry here (and its tests): the git blob
SHA-1 of each split file, the raw RecBole files it is prepared from and their item-text
columns, the prompt family of its LLM refinement, and its per-dataset defaults. Imports
nothing of the project.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train_augment", "train_original", "validation", "test")
# upstream repository and commit the published split files come from
PUBLISHED_REPO = "Chanwoo-Jeong-2000/ReFINe_plus"
PUBLISHED_COMMIT = "458d2b3693663514849fb28bba38eaa3d75ff0cb"
NETFLIX_TITLES, NETFLIX_GENRES = "movie_titles.csv", "netflix_genres.csv"


@dataclass(frozen=True)
class RawFormat:
    """How one dataset's raw files look: ``<stem>.inter`` (+ ``<stem>.item``), the item text
    columns a row must have, the RecBole zip, and the Netflix-only user draw."""

    stem: str
    text_cols: tuple[str, ...]
    zip_name: str | None = None
    sample_users: int = 0
    netflix_items: bool = False  # items from movie_titles.csv + netflix_genres.csv


@dataclass(frozen=True)
class Dataset:
    """A published dataset. ``blobs``: split -> git blob SHA-1 of its published file;
    ``prompt_family``: refine_llm.py's prompt template; ``hnlm_pairs_per_user``: the default
    cap of HNLMRec's hard-negative requests per user (None: every positive pair). A model's
    defaults on a dataset live in the model's file (recommenders/)."""

    name: str
    raw: RawFormat
    blobs: dict[str, str] = field(repr=False)
    prompt_family: str
    hnlm_pairs_per_user: int | None = None


DATASETS = {d.name: d for d in (
    Dataset("ML-100K",
            RawFormat("ml-100k", ("movie_title:token_seq", "release_year:token",
                                  "class:token_seq"), "MovieLens/ml-100k.zip"),
            {"train_augment": "0cc04baaf46fcc4ee59a6adbb999d8bf56adb8e9",
             "train_original": "38def0b51e296992900303f611ff2bf85c1a0b73",
             "validation": "dc14ca7fcd367346f249d6aeb23a3e09f20cbef1",
             "test": "f3cbe95698f3cd22627cf92045ff0eb5a0e951f5"},
            "movies"),
    Dataset("ML-1M",
            RawFormat("ml-1m", ("movie_title:token_seq", "release_year:token",
                                "genre:token_seq"), "MovieLens/ml-1m.zip"),
            {"train_augment": "40e29bb86d51752fe10a7bc1cd2e3d96c53bbbda",
             "train_original": "e3baf41eef82249f4af08dc0e9e846a84892a7a0",
             "validation": "474b0a7448e43441e02b924b4fc446f5492654f8",
             "test": "c1407e658b3e0815ace9822ea64dbfed13165d6a"},
            "movies",
            hnlm_pairs_per_user=20),  # its train_original has 407,268 positive pairs
    Dataset("Netflix-1M",
            RawFormat("netflix", ("title:token", "year:token", "genres:token"),
                      "Netflix/netflix.zip", sample_users=5000, netflix_items=True),
            {"train_augment": "771c07bced85dba460ce294a103b2bfa55d1c7ad",
             "train_original": "f4341eb1be8f1d794297e33f6ef3f022fc138b1e",
             "validation": "1d16d5157068acc8230ad6b234b5f6992401689d",
             "test": "d1b455f977e866fa707819dbb1df54ae1e563390"},
            "movies"),
    Dataset("Amazon_Digital_Music",
            RawFormat("Amazon_Digital_Music", ("title:token", "categories:token_seq"),
                      "Amazon_ratings/Amazon_Digital_Music.zip"),
            {"train_augment": "dac24d3d94cf865b015dfbc5e7e16df854b7c0f2",
             "train_original": "2fd87cad23f736fddce491ddffbcb057b8ea05ef",
             "validation": "6a942ba0108749460403ca53b5fd7d92dcd57c75",
             "test": "182119cc4c3f601d253cfef62bc89c875b7c4ad8"},
            "music"),
    Dataset("Amazon_Books",
            RawFormat("Amazon_Books", ("title:token", "categories:token_seq"),
                      "Amazon_ratings/Amazon_Books.zip"),
            {"train_augment": "e9b9200d12833f95584cd2279feefe0987ffa1d4",
             "train_original": "cc9a161e2c5055808411b7d8395ac1f6dfb91c6d",
             "validation": "3fe96a092f12828ed143f29863fbdde88cd871ee",
             "test": "a3ac9499f5124ddef4d8eba80047736a2fc53a58"},
            "books"),
)}

@dataclass(frozen=True)
class RandomSplitProtocol:
    """A baseline's own protocol of published random train/test splits (data/protocols.py):
    the test file of split k is ``test_path.format(k=k)`` in ``repo`` at ``commit`` with git
    blob ``test_blobs[k]``; train = the ratings of ``raw_stem`` not in it. ``epochs`` and
    ``evaluation_step``: the run's defaults on its folders (no validation split). The LLM
    edges of the LLM-PNGNN authors (``edges_path`` in ``edges_repo``) were made for
    ``edges_split``."""

    name: str
    base: str
    raw_stem: str
    repo: str
    commit: str
    test_path: str
    test_blobs: dict[int, str] = field(repr=False)
    threshold: float = 3.5
    epochs: int = 60
    evaluation_step: int = 5
    edges_repo: str = ""
    edges_path: str = ""
    edges_blob: str = ""
    edges_split: int = 1


PROTOCOLS = {p.name: p for p in (
    # SiReN's official repository holds five splits; the LLM-PNGNN authors' repository
    # (hliei/Recommender-System, ml-1m_split/test{1,2,3}.dat) holds the first three, the
    # same bytes (same git blobs)
    RandomSplitProtocol(
        "ml1m_random_split", "ML-1M", "ml-1m", "cw-seo/SiReN-reco",
        "b5d802ae0dfbbe066bb6dcc3c1f52cc1e8299d8e", "ml-1m/test_1m{k}.dat",
        {1: "3fd059dcc46b331309a3e0b5190e017f64496ab7",
         2: "a170e99e76f98e6ebb9e2657b428e12dd0af1b6f",
         3: "db100c0b142916f263e1c18e51d00ac64c9ed0f8",
         4: "ed8d5ed5597a99396a8cb356e4d0d230d7cb1f96",
         5: "cfcc88e297657fee5ea1a9501aef6560cea46f38"},
        edges_repo="hliei/Recommender-System@a0b932f03d3fd5b6c29fc309dc59fcebec0e33b7",
        edges_path="augmented_edges.pt",
        edges_blob="ebe1606999a5206fe21d524a94b989ee090be781"),
)}


def published_key(dataset: str, split: str) -> str:
    """A split file's path inside a data folder: "<dataset>/<dataset>_<split>.csv"."""
    return f"{dataset}/{dataset}_{split}.csv"


# published_key -> git blob SHA-1 of the published file
PUBLISHED_BLOBS = {published_key(d.name, split): blob
                   for d in DATASETS.values() for split, blob in d.blobs.items()}


def item_file_stem(dataset: str) -> str:
    """The RecBole stem of a dataset's raw files (its own name for an unpublished one)."""
    return DATASETS[dataset].raw.stem if dataset in DATASETS else dataset


# ----------------------------------------------------------------------------- the authors' LLM step

REFINE_NOTEBOOK_REPO = "Chanwoo-Jeong-2000/ReFINe"
REFINE_NOTEBOOK_COMMIT = "f9b6a92aa0c3a2a76b3a2ac317d18b9c5cde0d6e"
SKIP_USERS_FILE = "refine_skip_users.json"  # beside this file


@dataclass(frozen=True)
class RefineNotebook:
    """The authors' relabeling notebook of one dataset (``refine_llm.py --procedure
    reference``, docs/llm.md): ``path`` in REFINE_NOTEBOOK_REPO at REFINE_NOTEBOOK_COMMIT with
    git blob ``blob``; the raw item columns its ``title_genre`` text is built from; how many
    candidates one request holds; whether it seeds numpy once (False) or again before every
    user (True). Its prompt templates are read from the notebook file, never stored here;
    its list of skipped users is data, in SKIP_USERS_FILE."""

    dataset: str
    blob: str
    title_col: str
    genre_col: str
    chunk_size: int = 5
    reseed_per_user: bool = False
    seed: int = 2024
    token_limit: int = 5000

    @property
    def path(self) -> str:
        return f"dataset/{self.dataset}/2_augmenting_LLM_llama.ipynb"

    @property
    def url(self) -> str:
        return (f"https://raw.githubusercontent.com/{REFINE_NOTEBOOK_REPO}/"
                f"{REFINE_NOTEBOOK_COMMIT}/{self.path}")

    def skip_users(self) -> list[int]:
        import json
        from pathlib import Path
        with open(Path(__file__).with_name(SKIP_USERS_FILE), encoding="utf-8") as f:
            return json.load(f)[self.dataset]


REFINE_NOTEBOOKS = {n.dataset: n for n in (
    RefineNotebook("ML-100K", "564183e9bc19ca5548b19663bf012d6a470cea6d",
                   "movie_title:token_seq", "class:token_seq"),
    RefineNotebook("ML-1M", "c2914db30523918e0f437682c77f513eca4f5dfd",
                   "movie_title:token_seq", "genre:token_seq"),
    RefineNotebook("Netflix-1M", "4506fbe5ce1862db30e5c4bd4d4b4c4a283c601b",
                   "title:token", "genres:token", chunk_size=10, reseed_per_user=True),
)}
# Amazon_Digital_Music and Amazon_Books: neither REFINE_NOTEBOOK_REPO nor the ReFINe_plus
# repository (at any commit) holds their LLM step, so there is no reference procedure.
NO_REFERENCE_PROCEDURE = ("Amazon_Digital_Music", "Amazon_Books")
