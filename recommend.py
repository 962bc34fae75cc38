"""A trained run's recommendations: its best.pt on the data it trained on.

    python recommend.py --run RUN --user ID [--k 20] [--item_file FILE]   # one user's top-k
    python recommend.py --run RUN --all --out FILE.csv [--k 20]           # every user's
    python recommend.py --run RUN --export DIR                            # the embeddings

Ids are the dataset's own (as written in its CSV files). Scores are the model's final
embeddings' dot products, E_u · E_i; a user's train-file rows are masked as evaluation masks
them. ``--user`` also lists the user's known dislikes and where the model ranks them: the
train file's confirmed negatives (rating <= 1: 1 and the LLM's 0.5; dataloader.py) and the
rows of ``<DATASET>_test_dislikes.csv`` beside the split files when there is one. Refused
in one line, before anything is written: a run folder without best.pt, a run that did not
finish (unless ``--allow_unfinished``, and then said), a multi-seed folder without ``--seed``,
and data that changed since the run (every input's git blob SHA-1 is
compared with config.json's record). docs/recommend.md shows the output.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from data import provenance
from data.errors import UserError
from data.items import find_item_file, item_texts, read_train
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError
from data.splits import split_path
from runs.cli import command_line, run_cli
from runs.files import atomic_write, atomic_write_text, dump_json
from runs.seeds import SEEDS_FILE
from runs.trained import Trained, load_trained, top_items

DISLIKE_MAX = 1.0  # a confirmed negative: rating <= 1 in either train file (dataloader.py)
DISLIKES_SPLIT = "test_dislikes"  # <DATASET>_test_dislikes.csv: held-out dislikes, if any
CSV_COLUMNS = ("user_id", "rank", "item_id", "score")


class RecommendError(UserError, ValueError):
    """A run folder, user or flag recommend.py cannot use."""


# --------------------------------------------------------------------------- the run

def run_folder(run: str, seed: int | None) -> Path:
    """The run folder to load: ``run`` itself, or its ``seed<S>/`` when it is a multi-seed
    run (which needs ``--seed``)."""
    path = Path(run)
    if not path.is_dir():
        raise RecommendError(f"--run {run}: no such folder")
    seeds = sorted((p.name[4:] for p in path.glob("seed*")
                    if p.is_dir() and p.name[4:].lstrip("-").isdigit()), key=int)
    multi = (path / SEEDS_FILE).is_file() or (seeds and not (path / "config.json").is_file())
    listed = ", ".join(seeds) or "none yet"
    if multi and seed is None:
        raise RecommendError(f"--run {run} is a multi-seed run: pick one with --seed S "
                             f"(seeds: {listed})")
    if multi:
        if not (path / f"seed{seed}").is_dir():
            raise RecommendError(f"--seed {seed}: {run} has no seed{seed}/ (seeds: {listed})")
        return path / f"seed{seed}"
    if seed is not None:
        raise RecommendError(f"--seed {seed}: {run} is a single run, not a multi-seed folder")
    return path


@torch.no_grad()
def embeddings(trained: Trained) -> tuple[torch.Tensor, torch.Tensor]:
    """The scoring embeddings (users U x d, items I x d): model(norm_adj), every model."""
    e_users, e_items = trained.model(trained.graphs.norm_adj)
    return e_users.float(), e_items.float()


def describe(trained: Trained) -> str:
    c, data = trained.config, trained.data
    fingerprint = provenance.fingerprint(provenance.as_dicts(trained.inputs))
    said = f"; UNFINISHED: {trained.unfinished}" if trained.unfinished else ""
    return (f"run {trained.run_dir}: --model {c.model}, best epoch {trained.best_epoch}, "
            f"{c.dataset} ({c.dataset_augment} train file): {data.num_users} users, "
            f"{data.num_items} items; data unchanged since the run (inputs {fingerprint})"
            f"{said}")


def user_index(trained: Trained, user: str) -> int:
    ids = trained.data.user_ids
    found = np.flatnonzero(np.asarray(ids, dtype=str) == str(user))
    if found.size == 0:
        raise RecommendError(f"--user {user}: not a user of the run's training data "
                             f"({len(ids)} users with a rating >= 4 or <= 1 in the train "
                             f"file, ids as written there, e.g. {', '.join(map(str, ids[:3]))})")
    return int(found[0])


# --------------------------------------------------------------------------- --user

def item_titles(trained: Trained, train, item_file: str | None) -> tuple[dict, str | None]:
    """(item id -> (title, genre), why there are none or None): from the train CSV's title
    column, else the dataset's RecBole .item file (``--item_file``, else found as
    llm/augment.py finds it)."""
    path = find_item_file(trained.config.dataset, str(trained.data_dir), item_file,
                          beside_data_dir=True)
    if item_file and not path.is_file():
        raise RecommendError(f"--item_file {item_file}: no such file")
    try:
        return item_texts(train, path), None
    except DataError as err:
        return {}, str(err)


def table(header: tuple, rows: list[tuple]) -> list[str]:
    """Left-aligned text columns, two spaces apart (the last one not padded); a last
    column of titles none of the rows has is left out."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    if header[-1].startswith("title") and not any(r[-1] for r in cells[1:]):
        header, cells = header[:-1], [r[:-1] for r in cells]
    widths = [max(len(r[n]) for r in cells) for n in range(len(header) - 1)]
    return ["  " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip()
            for r in cells]


def title_of(titles: dict, item: str) -> str:
    title, genre = titles.get(item, ("", ""))
    return f"{title} ({genre})" if genre else title


def top_lines(trained, e_users, e_items, u: int, k: int, titles: dict) -> tuple[list, list]:
    """The ``--user`` list: (its lines, its item indices in rank order)."""
    seen = trained.graphs.seen_by_user
    masked = int(seen.degree()[u])
    k = min(k, trained.data.num_items - masked)
    _, top, values = next(top_items(e_users, e_items, seen, k, rows=torch.tensor([u])))
    items = top[0].tolist()
    ids = trained.data.item_ids
    rows = [(rank, ids[j], f"{s:.4f}", title_of(titles, str(ids[j])))
            for rank, (j, s) in enumerate(zip(items, values[0].tolist()), 1)]
    head = (f"user {trained.data.user_ids[u]}: top {k} of the {trained.data.num_items - masked} "
            f"items it has no training row with (its {masked} train-file rows are masked, as "
            f"evaluation masks them)")
    return [head, *table(("rank", "item", "score", "title (genre)"), rows)], items


def dislike_rows(frame, user: str, item_index: dict, only_low: bool) -> list[tuple]:
    """(item id, rating, item index or None) of ``user``'s rows in ``frame`` (``only_low``:
    those rated <= DISLIKE_MAX)."""
    rows = frame[frame[USER_COL] == user]
    if only_low:
        rows = rows[rows[RATING_COL] <= DISLIKE_MAX]
    return [(item, rating, item_index.get(item))
            for item, rating in zip(rows[ITEM_COL], rows[RATING_COL])]


def dislike_lines(trained, scores: torch.Tensor, masked: torch.Tensor, user: str, train,
                  top: list, titles: dict) -> list[str]:
    """Where the model ranks the user's known dislikes (module docstring), most highly
    ranked first."""
    item_index = {str(i): n for n, i in enumerate(trained.data.item_ids)}
    k = len(top)
    rows = sorted(((int((scores > scores[j]).sum()) + 1, item, r, j)
                   for item, r, j in dislike_rows(train, user, item_index, True)
                   if j is not None), key=lambda row: row[0])
    lines = ["", f"known dislikes of user {user} and where the model ranks them:",
             f"train file, rating <= {DISLIKE_MAX:g}: {len(rows)}, masked like every training "
             f"row (so never listed); 'rank if unmasked' ranks the score among all "
             f"{trained.data.num_items} items: {sum(rank <= k for rank, *_ in rows)} would be "
             f"in the top {k}"]
    if rows:
        lines += table(("item", "rating", "score", "rank if unmasked", "title (genre)"),
                       [(item, f"{r:g}", f"{scores[j]:.4f}", rank, title_of(titles, item))
                        for rank, item, r, j in rows])
    path = split_path(trained.data_dir, trained.config.dataset, DISLIKES_SPLIT)
    if not path.is_file():
        return lines + [f"held out: no {path.name} beside the split files"]
    return lines + held_out_lines(path, dislike_rows(read_train(path), user, item_index, False),
                                  scores, masked, top, titles)


def held_out_lines(path: Path, held: list, scores: torch.Tensor, masked: torch.Tensor,
                   top: list, titles: dict) -> list[str]:
    """The held-out dislikes' table: rank among the unmasked items, inside the top k?"""
    open_scores = scores.masked_fill(masked, float("-inf"))
    k, rows = len(top), []
    for item, r, j in held:
        if j is None:
            rank, inside = "not an item of the run", "-"
        elif masked[j]:
            rank, inside = "masked (a training row)", "-"
        else:
            rank = int((open_scores > scores[j]).sum()) + 1
            inside = "yes" if j in top else "no (kept out)"
        score = "-" if j is None else f"{scores[j]:.4f}"
        rows.append((item, f"{r:g}", score, rank, inside, title_of(titles, item)))
    rows.sort(key=lambda row: row[3] if isinstance(row[3], int) else float("inf"))
    kept = sum(row[4].startswith("no") for row in rows)
    lines = [f"held out, {path.name}: {len(rows)}; rank among the {int((~masked).sum())} "
             f"unmasked items: {kept} of {len(rows)} kept out of the top {k}"]
    if rows:
        lines += table(("item", "rating", "score", "rank", f"in top {k}", "title (genre)"),
                       rows)
    return lines


def user_report(trained: Trained, user: str, k: int, item_file: str | None) -> list[str]:
    u = user_index(trained, user)
    e_users, e_items = embeddings(trained)
    train = read_train(trained.data.files[0][1])
    titles, why = item_titles(trained, train, item_file)
    lines = [describe(trained)]
    if why:
        lines.append(f"no titles, item ids only: {why}")
    top, items = top_lines(trained, e_users, e_items, u, k, titles)
    seen = trained.graphs.seen_by_user
    masked = torch.zeros(trained.data.num_items, dtype=torch.bool)
    masked[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]] = True
    scores = e_users[u] @ e_items.t()
    return lines + top + dislike_lines(trained, scores, masked, str(trained.data.user_ids[u]),
                                       train, items, titles)


# --------------------------------------------------------------------------- --all, --export

def write_all(trained: Trained, k: int, out: Path) -> int:
    """Every user with a training row: its top k (CSV_COLUMNS, ranks 1..k), written
    atomically, a block of users at a time. Returns the number of users."""
    e_users, e_items = embeddings(trained)
    seen = trained.graphs.seen_by_user
    rows = torch.nonzero(seen.degree() > 0).flatten()
    user_ids, item_ids = trained.data.user_ids, trained.data.item_ids

    def write(f):
        f.write((",".join(CSV_COLUMNS) + "\n").encode())
        for part, top, values in top_items(e_users, e_items, seen, min(k, len(item_ids)),
                                           rows=rows):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            for u, items, scores in zip(part.tolist(), top.tolist(), values.tolist()):
                writer.writerows((user_ids[u], rank, item_ids[j], f"{s:.7g}")
                                 for rank, (j, s) in enumerate(zip(items, scores), 1)
                                 if s != float("-inf"))  # fewer unmasked items than k
            f.write(buffer.getvalue().encode())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, write)
    return int(rows.numel())


def export(trained: Trained, folder: Path) -> dict:
    """user_embeddings.npy, item_embeddings.npy (float32, rows in user_ids.txt /
    item_ids.txt order) and about.json into ``folder``; returns about.json's content."""
    e_users, e_items = (e.cpu().numpy().astype(np.float32) for e in embeddings(trained))
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("user", e_users), ("item", e_items)):
        atomic_write(folder / f"{name}_embeddings.npy", lambda f, a=array: np.save(f, a))
    for name, ids in (("user", trained.data.user_ids), ("item", trained.data.item_ids)):
        atomic_write_text(folder / f"{name}_ids.txt", "".join(f"{i}\n" for i in ids))
    c = trained.config
    about = dict(
        command=command_line("python recommend.py"), run=str(trained.run_dir),
        dataset=c.dataset, dataset_augment=c.dataset_augment, model=c.model,
        best_epoch=trained.best_epoch, unfinished=trained.unfinished,
        users=e_users.shape[0], items=e_items.shape[0], dim=e_users.shape[1], score="user_embeddings @ item_embeddings.T; evaluation masks "
                                   "each user's train-file rows",
        inputs_fingerprint=provenance.fingerprint(provenance.as_dicts(trained.inputs)),
        inputs=provenance.as_dicts(trained.inputs))
    dump_json(about, folder / "about.json")
    return about


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python recommend.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder of python main.py")
    p.add_argument("--seed", type=int, help="a multi-seed run: which seed<S>/ to use")
    p.add_argument("--data_dir", help="where the run's data is now (default: the run's)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--user", help="one user's top-k and known dislikes (its id)")
    mode.add_argument("--all", action="store_true", help="every user's top-k into --out")
    mode.add_argument("--export", metavar="DIR", help="write the embeddings and id maps")
    p.add_argument("--k", type=int, default=20, help="list length (default 20)")
    p.add_argument("--out", help="--all: the CSV to write (user_id, rank, item_id, score)")
    p.add_argument("--item_file", help="--user: RecBole .item file with the titles "
                                       "(default: found beside the data)")
    p.add_argument("--allow_unfinished", action="store_true",
                   help="use the best.pt of a run that did not finish (killed, still running "
                        "or resumed since); refused without it, and said in the output")
    return p


def run(args) -> int:
    if args.k < 1:
        raise RecommendError("--k must be >= 1")
    if bool(args.all) != bool(args.out):
        raise RecommendError("--all needs --out FILE.csv" if args.all else
                             "--out: only with --all")
    if args.item_file and args.user is None:
        raise RecommendError("--item_file: only with --user")
    trained = load_trained(run_folder(args.run, args.seed), None, args.data_dir, flag="--run",
                           unfinished_flag=None if args.allow_unfinished else
                           "--allow_unfinished")
    if args.user is not None:
        print("\n".join(user_report(trained, args.user, args.k, args.item_file)))
    elif args.all:
        users = write_all(trained, args.k, Path(args.out))
        print(f"{describe(trained)}\nwrote {args.out}: top {args.k} of {users} users "
              f"(train-file rows masked)")
    else:
        about = export(trained, Path(args.export))
        print(f"{describe(trained)}\nwrote {args.export}: {about['users']} x {about['dim']} "
              f"user and {about['items']} x {about['dim']} item embeddings, their id maps, "
              f"about.json")
    return 0


def main(argv=None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
