"""A local Hugging Face causal LM answering refine_llm.py's prompts (``--backend hf``)."""
from __future__ import annotations

from pathlib import Path

from data.schema import DataError
from llm.backends import Backend, Option, local_path
from llm.prompts import SEPARATOR


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
        if local_path(model) and not Path(model).exists():
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

    def full_completion(self, prompt: str, max_length: int) -> str:
        """``--procedure reference``: one unpadded prompt, greedy, until EOS or ``max_length``
        tokens in all (prompt included), no stop string; the whole sequence decoded (the
        prompt's text as the tokenizer gives it back, then the continuation)."""
        batch = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        n_new = max(max_length - batch["input_ids"].shape[1], 0)
        with self.torch.no_grad():
            out = self.model.generate(
                **batch, do_sample=False, num_beams=1, max_new_tokens=n_new,
                pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0], skip_special_tokens=True)


BACKEND = Backend(
    supports={"text", "chat", "full_completion"}, needs_model=True,
    build=lambda cfg, texts, job: HFBackend(cfg),
    options=(Option("gguf_file", None, "GGUF file inside --model (or a path to it)"),
             Option("dtype", "auto", "auto/float32/float16/bfloat16")),
    notes={"model": "local dir or hub id", "batch_size": "prompts per generate call"})
