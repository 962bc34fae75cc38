"""An OpenAI-compatible server answering refine_llm.py's prompts (``--backend openai``)."""
from __future__ import annotations

import http.client
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from data.schema import DataError
from llm.backends import Backend, Option
from llm.http_client import AnswerTooLarge, Client, check_url
from llm.prompts import SEPARATOR

MAX_ANSWER_BYTES = 16 << 20  # an answer is a few KB: a larger one is a server gone wrong


class OpenAIBackend:
    """OpenAI-compatible ``/completions`` (or ``/chat/completions`` with ``--chat``),
    temperature 0. Server errors (5xx, 429), timeouts, dropped connections and malformed
    answers are retried ``max_retries`` times with exponential backoff (1 s, 2 s, 4 s …);
    then the run stops with a one-line error, keeping the cache. ``timeout`` bounds each
    request as a whole, an answer past MAX_ANSWER_BYTES is refused, and Ctrl-C ends every
    request in flight at once (llm/http_client.py).

    Token counts come from the server's tokenize endpoint when it has one (llama.cpp's
    ``/tokenize`` or llama-cpp-python's ``/extras/tokenize``), else from a length
    estimate (1 token per 3 characters, warned once).
    """

    reads_prompts = True

    def __init__(self, cfg, backoff: float = 1.0):
        self.base = cfg.base_url.rstrip("/")
        try:
            check_url(self.base, "--base_url")
        except ValueError as err:
            raise DataError(str(err)) from None
        self.client = Client(cfg.timeout, MAX_ANSWER_BYTES)
        self.model, self.chat = cfg.model, cfg.chat
        self.timeout, self.max_retries, self.backoff = cfg.timeout, cfg.max_retries, backoff
        self.max_new_tokens = cfg.max_new_tokens
        self.concurrency = cfg.concurrency
        if self.concurrency < 1:
            raise DataError("--concurrency must be >= 1")
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
                self.client.pause(self.backoff * 2 ** (attempt - 1))
            try:
                status, body = self.client.request(method, url, data, self.headers)
                if status >= 400:
                    last = f"HTTP {status} from {url}"
                    if status < 500 and status != 429:
                        raise DataError(f"{last}: {body[:200].decode(errors='replace')}")
                    continue
                return json.loads(body)
            except TimeoutError:
                last = f"timeout after {self.timeout:g} s from {url}"
            except AnswerTooLarge:
                raise DataError(f"answer larger than {MAX_ANSWER_BYTES / 2 ** 20:g} MiB from "
                                f"{url}: not an OpenAI-compatible server?") from None
            except (json.JSONDecodeError, UnicodeDecodeError):
                last = f"malformed (non-JSON) answer from {url}"
            except ConnectionRefusedError as err:
                last = f"cannot connect to {url} ({err.strerror})"
            except (OSError, http.client.HTTPException) as err:
                last = f"connection error with {url} ({err or type(err).__name__})"
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

    def full_completion(self, prompt: str, max_length: int) -> str:
        """``--procedure reference``: the prompt followed by the server's greedy completion of
        up to ``max_length`` tokens in all (prompt included; counted by the server's
        tokenizer or estimated), no stop string. A server does not give the prompt back
        decoded as a local tokenizer would, so the prompt's own text stands for it."""
        n_new = max(max_length - self.count_tokens(prompt), 1)
        return prompt + self._complete(prompt, max_tokens=n_new, stop=None)

    def _complete(self, prompt: str, max_tokens: int | None = None, stop=(SEPARATOR,)) -> str:
        common = {"model": self.model, "max_tokens": max_tokens or self.max_new_tokens,
                  "temperature": 0.0, "top_p": 1.0}
        if stop:
            common["stop"] = list(stop)
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
                self.client.pause(self.backoff * 2 ** attempt)
        raise DataError(f"malformed answer from {self.base}{path} (no choices[0] text) after "
                        f"{self.max_retries + 1} tries")

    def generate(self, prompts: list[str], contexts=None) -> list[str]:
        """One request per prompt, up to --concurrency of them at once (a server that
        batches, such as vLLM, then works on them together); answers in prompt order."""
        if self.concurrency == 1 or len(prompts) < 2:
            return [self._complete(p) for p in prompts]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        try:
            return list(pool.map(self._complete, prompts))
        except BaseException:  # Ctrl-C, or one request failed for good: end the others now
            self.client.stop()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


BACKEND = Backend(
    supports={"text", "chat", "full_completion"}, needs_model=True,
    build=lambda cfg, texts, job: OpenAIBackend(cfg),
    options=(
        Option("base_url", "http://127.0.0.1:8000/v1", "endpoint root (…/v1)"),
        Option("api_key_env", "OPENAI_API_KEY", "environment variable with the key"),
        Option("timeout", 120.0, "seconds per request in all (connect to last byte)",
               float),
        Option("max_retries", 3, "HTTP retries with backoff", int),
        Option("concurrency", 1, "requests of a batch sent at once (a batching server such "
                                 "as vLLM: e.g. 64, with --batch_size as large; llama.cpp's "
                                 "one slot: 1)", int)),
    notes={"model": "model name",
           "batch_size": "first attempts go before their retries, which keeps a one-slot "
                         "server's prompt cache (llama.cpp) from thrashing"})
