"""A wiring check, not a model (``--backend constant``): every prompt gets --constant_answer."""
from __future__ import annotations

from llm.backends import Backend, Option


class ConstantBackend:
    reads_prompts = True

    def __init__(self, cfg):
        self.answer = cfg.constant_answer

    def count_tokens(self, prompt: str) -> None:
        return None

    def generate(self, prompts, contexts=None) -> list[str]:
        return [self.answer] * len(prompts)


BACKEND = Backend(supports={"text"}, build=lambda cfg, texts, job: ConstantBackend(cfg),
                  options=(Option("constant_answer", "[]", "the answer to every prompt"),))
