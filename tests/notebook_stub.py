"""Running the authors' relabeling notebooks themselves (from $REFINE_REFERENCE_DIR) with a
stub tokenizer and model, beside ``refine_llm.py --procedure reference`` with a stub backend
that follows the same rules: token count = words + 1, answers from ``canned_answer``.

Nothing of the notebooks is stored here: their code cells are read from the reference
folder and executed in a temporary folder that holds their input file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from pathlib import Path

SEPARATOR = "-" * 45  # the notebooks' separator line (a fact of their files)

# answer formats (``{0}`` = the chosen titles as "<Title>" items joined by ", ", ``{g}`` the
# same with their genre part, ``{all}`` every candidate); every one ends with "]" once cut,
# so the notebooks' retry (which fails in the ML-100K notebook) is never needed unless a
# test asks for it
FORMATS = [
    "[{0}]",
    "[{g}]",
    "[{nospace}]",  # "<Title(genre: G)>": no space before "(genre:"
    "[]",
    "Answer: [{0}]",  # no line starting with "[": parsed as nothing, yet complete
    "[{0}]\n[{g}]",
    "  [{0}]  ",
    "[{0}]\n" + SEPARATOR + "\n[{all}]\n",  # cut at the separator line
    "[{0}]\nCandidate List:\n[<Not Asked (genre: Drama)>]\n\nOutput (Answer):\n[{g}]",
    "The user would like these.\n[{0}]",
    "[{0}, <Some Title Nobody Rated>]",
    "[{0}]\n\n" + SEPARATOR,
    "[{0}]]",
    "[{0}]\r[{all}]",  # a lone carriage return: a line break to their parser's file
]


def stub_count(text: str) -> int:
    """The stub tokenizer's length: 4 per whitespace-separated word (so that some ML-100K
    requests pass the 5,000 limit and some lie just below or above it), plus the character
    count modulo 7 (a text one character shorter counts differently), plus one (a BOS)."""
    return 4 * len(text.split()) + len(text) % 7 + 1


def chunk_titles(prompt: str) -> list[tuple[str, str]]:
    """(title, genre) of each candidate in the prompt's last candidate list."""
    last = prompt.rsplit("Candidate List:", 1)[1].strip().split("\n", 1)[0]
    out = []
    for item in re.findall(r"<([^>]*)>", last):
        m = re.match(r"(.*) \(genre: (.*)\)$", item)
        out.append((m.group(1), m.group(2)) if m else (item, ""))
    return out


def canned_answer(prompt: str, formats=FORMATS) -> str:
    """A deterministic answer to a prompt: some of its candidates, in one of ``formats``."""
    digest = hashlib.sha1(prompt.encode()).digest()
    items = chunk_titles(prompt)
    chosen = [t for n, t in enumerate(items) if (digest[1 + n % 16] + n) % 3 == 0]
    plain = ", ".join(f"<{t}>" for t, _ in chosen)
    genre = ", ".join(f"<{t} (genre: {g})>" for t, g in chosen)
    nospace = ", ".join(f"<{t}(genre: {g})>" for t, g in chosen)
    every = ", ".join(f"<{t}>" for t, _ in items)
    return formats[digest[0] % len(formats)].format(plain, g=genre, nospace=nospace, all=every)


class _Ids(list):
    """A (1, n) "tensor" that remembers the text it encodes."""

    def __init__(self, text: str):
        super().__init__([self])
        self.text = text
        self.shape = (1, stub_count(text))

    def to(self, device):
        return self


class _Encoding(dict):
    def to(self, device):
        return self


class StubTokenizer:
    pad_token_id, eos_token_id = None, 2

    def __call__(self, text, return_tensors=None, **kwargs):
        ids = _Ids(text)
        return _Encoding(input_ids=ids, attention_mask=ids)

    def decode(self, ids, skip_special_tokens=True):
        return ids.text


class StubModel:
    """Records every prompt and its ``max_length``; answers prompt + ``answer(prompt)``."""

    def __init__(self, answer=canned_answer):
        self.answer, self.calls = answer, []

    def generate(self, input_ids, max_length, **kwargs):
        self.calls.append((input_ids.text, max_length))
        return [_Ids(input_ids.text + self.answer(input_ids.text))]


class StubBackend:
    """The same rules for refine_llm.py (``make_backend`` is patched to return it)."""

    reads_prompts = True

    def __init__(self, answer=canned_answer):
        self.answer, self.calls = answer, []

    def count_tokens(self, text: str) -> int:
        return stub_count(text)

    def full_completion(self, prompt: str, max_length: int) -> str:
        self.calls.append((prompt, max_length))
        return prompt + self.answer(prompt)


def code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@contextlib.contextmanager
def authors_pandas():
    """pandas as the authors ran it (before 3.0): ``.values`` of a text column is a
    writable numpy object array. Under pandas 3 it is a pandas StringArray (which numpy
    prints differently) and, with copy-on-write, read-only (the notebook shuffles it in
    place): strings are read as objects and ``numpy.random.shuffle`` makes such a view
    writable first (the draws are the same)."""
    import warnings

    import numpy as np
    import pandas as pd
    import pytest
    shuffle = np.random.shuffle

    def writable_shuffle(x):
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x.flags.writeable = True
        return shuffle(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            context = pd.option_context("future.infer_string", False)
        except (KeyError, pd.errors.OptionError):
            pytest.skip("this pandas cannot read strings as object arrays, as the authors' did")
        np.random.shuffle = writable_shuffle
        try:
            with context:
                yield
        finally:
            np.random.shuffle = shuffle


def run_notebook(notebook: Path, workdir: Path, model: StubModel, skip_loading=True) -> dict:
    """Execute the notebook's code cells in ``workdir`` (its input CSV there), the cell
    that loads Llama-2 replaced by the stubs; returns the notebook's namespace."""
    namespace = {"tokenizer": StubTokenizer(), "model": model, "device": "cpu",
                 "__name__": "notebook"}
    here = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(io.StringIO()), authors_pandas():
            for source in code_cells(notebook):
                if skip_loading and "from_pretrained" in source:
                    continue
                exec(compile(source, str(notebook), "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace
