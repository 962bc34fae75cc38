"""Prompt templates of the LLM relabeling step (docs/llm.md) and the parsing of answers.

One template per dataset family (movies, music, books). Each has two layouts: ``main``
(lists first, then the task: the few-shot completion prompt of the reference) and
``retry`` (task statement first, then the lists), used once when an answer does not end
with "]". A prompt holds: the dataset name, the user's 5-rated titles ("positively rated"),
one worked example (the example candidates and, as its answer, the 4-rated titles among
them without genre) and then the real task with one chunk of candidates. The completion
stops at the separator line ``SEPARATOR``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from data.registry import DATASETS

SEPARATOR = "###"

_MAIN = """\
Dataset: {dataset}. Below is what one user rated on it.
{Items} the user rated positively:
[{positives}]

Example task.
Candidate {items}:
[{example_candidates}]
Which of the candidate {items} did the user rate positively? Answer with a bracketed list of <Title> items.
Answer: [{example_answer}]
{separator}
Task.
Candidate {items}:
[{candidates}]
Which of the candidate {items} did the user rate positively? Answer with a bracketed list of <Title> items.
Answer:"""

_RETRY = """\
Task: from a list of candidate {items}, pick those that a user of the {dataset} dataset rated positively, \
judging from the {items} the user rated positively. Answer with one line holding a bracketed list \
of <Title> items, for example [<Title A>, <Title B>], or [] if none.

{Items} the user rated positively:
[{positives}]

Example.
Candidate {items}:
[{example_candidates}]
Answer: [{example_answer}]
{separator}
Candidate {items}:
[{candidates}]
Answer:"""


@dataclass(frozen=True)
class PromptTemplate:
    """The two layouts of one dataset family; ``items`` names the kind of item."""

    name: str
    items: str
    main: str = _MAIN
    retry: str = _RETRY

    @property
    def digest(self) -> str:
        """Short hash of everything that shapes a prompt; part of the cache key."""
        text = "\0".join((self.name, self.items, self.main, self.retry, SEPARATOR))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def render(self, layout: str, *, dataset: str, positives: list[str],
               example_candidates: list[str], example_answer: list[str],
               candidates: list[str]) -> str:
        """The prompt text; list arguments hold item texts "<Title (genre: G)>" except
        ``example_answer``, which holds "<Title>"."""
        text = self.main if layout == "main" else self.retry
        return text.format(
            dataset=dataset, items=self.items, Items=self.items.capitalize(),
            positives=", ".join(positives), example_candidates=", ".join(example_candidates),
            example_answer=", ".join(example_answer), candidates=", ".join(candidates),
            separator=SEPARATOR)


TEMPLATES = {
    "movies": PromptTemplate("movies", "movies"),
    "music": PromptTemplate("music", "albums"),
    "books": PromptTemplate("books", "books"),
}

FAMILY_OF_DATASET = {name: d.prompt_family for name, d in DATASETS.items()}


def item_text(title: str, genre: str | None) -> str:
    """"<Title (genre: Genres)>", or "<Title>" without a genre."""
    return f"<{title} (genre: {genre})>" if genre else f"<{title}>"


def cut_answer(generated: str) -> str:
    """The generated text up to the separator line that follows the answer, stripped."""
    return generated.split(SEPARATOR, 1)[0].strip()


def is_complete(answer: str) -> bool:
    """The reference's check: a usable answer ends with "]"."""
    return answer.endswith("]")


_TITLE = re.compile(r"<([^<>]*)>")
_GENRE_SUFFIX = re.compile(r"\s*\(genre:[^()]*\)\s*$")


def parse_answer(answer: str) -> tuple[int, list[str]]:
    """(number of answer lines starting with "[", titles in them).

    Every <...> on such a line is a title; a " (genre: ...)" suffix is dropped.
    """
    lines = [line.strip() for line in answer.splitlines()]
    lines = [line for line in lines if line.startswith("[")]
    titles = [_GENRE_SUFFIX.sub("", m).strip() for line in lines for m in _TITLE.findall(line)]
    return len(lines), titles
