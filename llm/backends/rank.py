"""The interaction augmentation's text-free stand-in for an LLM (``--backend rank``)."""
from __future__ import annotations

from llm.backends import Backend


class RankPicker:
    """Not an LLM, labelled as such in manifests: the base model's own first candidate is the
    favourite and its last (k-th) the least favourite. It needs no item text (datasets
    without titles) and measures what the augmentation adds when the "LLM" only repeats the
    base model's ranking."""

    reads_prompts = False

    def __init__(self, cfg, texts: dict):
        pass

    def count_tokens(self, prompt: str) -> None:
        return None

    def generate(self, prompts, contexts: list[dict]) -> list[str]:
        return [f"1::{len(c['candidates'])}" for c in contexts]


BACKEND = Backend(
    supports={"pick"}, item_texts=False,
    build=lambda cfg, texts, job: RankPicker(cfg, texts),
    label=lambda cfg, job: "rank-picker: the base model's first and last candidate (not an LLM)")
