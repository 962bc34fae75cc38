"""The CPU stand-in for an LLM by item-text similarity (``--backend embedding``): the refiner
of refine_llm.py and the picker of the interaction augmentation (llm/augment.py)."""
from __future__ import annotations

import numpy as np

from data.items import sentence
from llm import text_encoder
from llm.backends import Backend, Option


def item_embeddings(cfg, texts: dict) -> tuple[list[str], dict[str, int], np.ndarray]:
    """(sorted item ids, id -> row, unit-norm sentence embeddings) of the item texts."""
    import torch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = text_encoder.load_encoder(cfg.embed_model, cfg.device)
    items = sorted(texts)
    emb = text_encoder.encode(encoder, [sentence(*texts[i]) for i in items])
    return items, {item: n for n, item in enumerate(items)}, emb


class EmbeddingBackend:
    """CPU refiner: no LLM, a sentence embedding of each item text.

    For candidate c of user u, with cosine similarities between item embeddings,
    ``s(c, S)`` = mean of the ``top_k`` largest cos(c, j) over j in S, and for an empty S
    the dataset's mean pairwise cosine (``base``). Liked L = u's 5-rated items and the
    4-rated example candidates; disliked D = the other example candidates (the 1-rated,
    and the 2-rated when u's mean >= 3) — exactly what the LLM prompt shows.
    c is judged positive iff s(c, L) - s(c, D) > margin.
    """

    reads_prompts = False

    def __init__(self, cfg, texts: dict):
        self.items, self.index, self.emb = item_embeddings(cfg, texts)  # (I, dim), unit rows
        self.titles = {item: texts[item][0] for item in self.items}
        self.base = float(np.square(self.emb.mean(0)).sum())
        self.top_k, self.margin = cfg.embed_top_k, cfg.embed_margin

    def count_tokens(self, prompt: str) -> None:
        return None

    def score(self, candidates: list[str], refs: list[str]) -> np.ndarray:
        """s(c, refs) for each candidate: mean of the top-k cosine similarities."""
        if not refs:
            return np.full(len(candidates), self.base)
        c = self.emb[[self.index[i] for i in candidates]]
        r = self.emb[[self.index[i] for i in refs]]
        sim = c @ r.T  # (C, R)
        k = min(self.top_k, sim.shape[1])
        return np.sort(sim, axis=1)[:, -k:].mean(1)

    def decide(self, context: dict) -> list[str]:
        liked4 = set(context["example_answer"])
        liked = list(context["positives"]) + list(context["example_answer"])
        disliked = [i for i in context["examples"] if i not in liked4]
        cands = list(context["candidates"])
        s = self.score(cands, liked) - self.score(cands, disliked)
        return [c for c, v in zip(cands, s) if v > self.margin]

    def generate(self, prompts, contexts: list[dict]) -> list[str]:
        return ["[" + ", ".join(f"<{self.titles[i]}>" for i in self.decide(c)) + "]"
                for c in contexts]


class EmbeddingPicker:
    """The augmentation's stand-in for an LLM — not an LLM, labelled as such in manifests:
    of a user's candidates, the one whose text is most similar (cosine, to the mean
    embedding of the history items rated >= 4, or of all history items when none is) is the
    favourite, the least similar the least favourite. Deterministic; answers "a::b" with
    the candidates' local numbers, as the prompt asks an LLM to."""

    reads_prompts = False

    def __init__(self, cfg, texts: dict):
        self.items, self.index, self.emb = item_embeddings(cfg, texts)

    def count_tokens(self, prompt: str) -> None:
        return None

    def pick(self, context: dict) -> tuple[int, int]:
        liked = [i for i, r in context["history"] if r >= 4] or [i for i, _ in context["history"]]
        known = [i for i in liked if i in self.index]
        cands = context["candidates"]
        if not known or any(c not in self.index for c in cands):
            return 0, 0  # no text: an invalid answer, counted as such
        profile = self.emb[[self.index[i] for i in known]].mean(0)
        sim = self.emb[[self.index[c] for c in cands]] @ profile
        return int(np.argmax(sim)) + 1, int(np.argmin(sim)) + 1

    def generate(self, prompts, contexts: list[dict]) -> list[str]:
        return ["{}::{}".format(*self.pick(c)) for c in contexts]


def label(cfg, job: str) -> str:
    """Not an LLM: its name in cache keys and manifests says what it computes."""
    model = cfg.embed_model or "all-MiniLM-L6-v2"
    if job == "pick":
        return f"embedding-picker:{model} (not an LLM)"
    return f"embedding:{model}:top{cfg.embed_top_k}:margin{cfg.embed_margin:g}"


BACKEND = Backend(
    supports={"relabel", "pick"}, label=label,
    build=lambda cfg, texts, job: (EmbeddingPicker if job == "pick" else EmbeddingBackend)(
        cfg, texts),
    options=(Option("embed_top_k", 3, "s(c, S) is the mean of the k largest cosines", int,
                    jobs=("relabel",)),
             Option("embed_margin", 0.0, "c is selected iff s(c, liked) - s(c, disliked) > "
                                         "margin", float, jobs=("relabel",))))
