"""HNLMRec's supervised contrastive fine-tuning (SCFT): LoRA on a local causal LM so that
it maps a (user, item) prompt to a hard-negative embedding, supervised by MixGCF.

    python -m llm.scft --dataset ML-100K --mixgcf_run result/ML-100K/<mixgcf run> \\
        --model LOCAL_HF_DIR [--profiles_dir dataset/ML-100K/hnlm] [--max_records 5000] \\
        [--epochs 1] [--device cuda --dtype bfloat16] --output dataset/ML-100K/scft.npz

Records, one per positive training pair (u, i+) of the MixGCF run's split (``--max_records``:
a seeded sample): the query is an instruction, u's pooled MixGCF embedding and profile, i+'s
embedding and profile (vectors written with 3 decimals; profiles from ``python -m llm.hnlm``
when ``--profiles_dir`` has them, else "None"); the positive passage is MixGCF's
synthesized negative for the pair (computed once, M = ``--candidates``, seeded), the
negative passage a random unseen item's embedding. The encoder is the LM without its head
(``AutoModel``) with LoRA on q/k/v/o; the query goes through the chat template, every text
gets an EOS token appended, and its embedding is the last layer's state at that EOS token
— in training and at inference alike (the released code mean-pools at inference). Loss over
the micro-batch's in-batch negatives with cosine / ``--temperature``: InfoNCE (the paper's,
default) or the code's pairwise logistic. Output: a vector file (data/vectors.py) of the
tuned encoder's query embeddings, which ``--model hnlmrec --negative_file`` reads.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.schema import DataError
from data.vectors import write_pair_vectors
from runs.cli import add_dataclass_flags, run_cli
from runs.files import atomic_write_text

INSTRUCTION = ("Given a user's collaborative embedding and profile and an item the user "
               "interacted with, produce the embedding of a hard negative item for the user.")
SYSTEM = "You are a helpful assistant."
LOSSES = ("infonce", "pairwise_logistic")


@dataclass(kw_only=True)
class SCFTConfig:
    dataset: str
    mixgcf_run: str | None = None
    allow_unfinished_base: bool = False
    model: str | None = None
    data_dir: str | None = None
    profiles_dir: str | None = None
    output: str | None = None
    max_records: int | None = None
    candidates: int = 16
    seed: int = 2024
    lora_r: int = 32
    lora_alpha: int | None = None  # 2 r; HNLMRec's code leaves PEFT's default, 8
    lora_dropout: float = 0.05
    temperature: float = 0.05
    loss: str = "infonce"
    learning_rate: float = 2e-5
    max_grad_norm: float = 1.0  # the Trainer's clipping; 0: off
    epochs: int = 1
    batch_size: int = 8
    max_len_query: int = 1024  # two 64-d vectors as text alone take about 500 tokens
    max_len_passage: int = 512
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise DataError(f"--loss must be one of {', '.join(LOSSES)}")
        for name in ("candidates", "lora_r", "epochs", "batch_size", "max_len_query",
                     "max_len_passage"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1")
        if self.max_grad_norm < 0:
            raise DataError("--max_grad_norm must be >= 0 (0: no clipping)")
        if self.batch_size < 2:
            raise DataError("--batch_size must be >= 2 (the negatives are in-batch)")


@dataclass(frozen=True)
class Record:
    user: str
    item: str
    query: str
    pos: str
    neg: str


def vector_text(v) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in np.asarray(v, dtype=np.float64)) + "]"


def query_text(e_user, user_profile: str, e_item, item_profile: str) -> str:
    return (f"{INSTRUCTION}\nUser embedding: {vector_text(e_user)}\nUser profile: "
            f"{user_profile}\nItem embedding: {vector_text(e_item)}\nItem profile: "
            f"{item_profile}")


# --------------------------------------------------------------------------- encoder

class Encoder:
    """A causal LM without its head, LoRA on q/k/v/o, EOS pooling (module docstring)."""

    def __init__(self, cfg: SCFTConfig):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        if self.tokenizer.eos_token_id is None:
            raise DataError(f"{cfg.model}: the tokenizer has no EOS token to pool at")
        dtype = {"float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}[cfg.dtype]
        torch.manual_seed(cfg.seed)  # the LoRA matrices' initialisation
        base = AutoModel.from_pretrained(cfg.model, dtype=dtype)
        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="none",
                          task_type="FEATURE_EXTRACTION")
        self.model = get_peft_model(base, lora).to(cfg.device)

    def texts(self, texts: list[str], as_query: bool) -> list[str]:
        """The query in the chat template (a passage as it is)."""
        tok = self.tokenizer
        if not (as_query and tok.chat_template):
            return list(texts)
        return [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": t}],
                                        add_generation_prompt=True, tokenize=False)
                for t in texts]

    def truncated(self, texts: list[str], as_query: bool) -> int:
        """How many of the texts are cut by the length limit."""
        limit = (self.cfg.max_len_query if as_query else self.cfg.max_len_passage) - 1
        return sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) > limit
                   for t in self.texts(texts, as_query))

    def batch(self, texts: list[str], as_query: bool) -> dict:
        """Token ids with EOS appended (after truncating to max_len - 1), right-padded."""
        tok, cfg = self.tokenizer, self.cfg
        limit = (cfg.max_len_query if as_query else cfg.max_len_passage) - 1
        ids = [tok(t, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
               + [tok.eos_token_id] for t in self.texts(texts, as_query)]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        return {"input_ids": input_ids.to(cfg.device), "attention_mask": mask.to(cfg.device)}

    def embed(self, texts: list[str], as_query: bool) -> torch.Tensor:
        """(len(texts), hidden): the last layer's state at each text's EOS token."""
        inputs = self.batch(texts, as_query)
        hidden = self.model(**inputs).last_hidden_state
        last = inputs["attention_mask"].sum(1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last].float()

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


def scft_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float,
              kind: str = "infonce") -> torch.Tensor:
    """s+_k = cos(q_k, p_k)/tau, s-_km = cos(q_k, n_m)/tau over every negative of the batch.
    infonce: mean_k -log(exp s+_k / (exp s+_k + sum_m exp s-_km)); pairwise_logistic (the
    released code): mean_km -log sigmoid(s+_k - s-_km)."""
    q, p, n = (F.normalize(x, dim=1) for x in (q, p, n))
    pos = (q * p).sum(1) / temperature  # (B,)
    neg = q @ n.t() / temperature  # (B, B)
    if kind == "pairwise_logistic":
        return F.softplus(neg - pos.unsqueeze(1)).mean()
    return (torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], 1), 1) - pos).mean()


def train(encoder: Encoder, records: list[Record], cfg: SCFTConfig, log=print) -> list[float]:
    """AdamW (no weight decay) on the LoRA parameters, gradients clipped to norm
    --max_grad_norm, the learning rate falling linearly to 0 (the Hugging Face Trainer's
    defaults, which HNLMRec's code runs), shuffled micro-batches (seeded); returns the step
    losses."""
    params = [p for _, p in encoder.trainable()]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    per_epoch = sum(len(records[s:s + cfg.batch_size]) >= 2
                    for s in range(0, len(records), cfg.batch_size))
    total = max(1, per_epoch * cfg.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    generator = torch.Generator().manual_seed(cfg.seed)
    encoder.model.train()
    losses = []
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(records), generator=generator).tolist()
        batches = [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        epoch_losses = []
        for rows in (b for b in batches if len(b) >= 2):  # in-batch negatives need 2 rows
            loss = batch_loss(encoder, [records[k] for k in rows], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
            epoch_losses.append(float(loss.detach()))
        losses += epoch_losses
        log(f"scft epoch {epoch}: mean loss {np.mean(epoch_losses):.4f} "
            f"over {len(epoch_losses)} steps")
    return losses


def batch_loss(encoder: Encoder, batch: list[Record], cfg: SCFTConfig) -> torch.Tensor:
    q = encoder.embed([r.query for r in batch], as_query=True)
    p = encoder.embed([r.pos for r in batch], as_query=False)
    n = encoder.embed([r.neg for r in batch], as_query=False)
    return scft_loss(q, p, n, cfg.temperature, cfg.loss)


@torch.no_grad()
def infer(encoder: Encoder, queries: list[str], batch_size: int = 8) -> np.ndarray:
    """The tuned encoder's query embeddings (the hard-negative vectors h_ui)."""
    encoder.model.eval()
    out = [encoder.embed(queries[s:s + batch_size], as_query=True).cpu()
           for s in range(0, len(queries), batch_size)]
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- records

def read_profiles(profiles_dir: str | None, step: str) -> dict:
    """subject -> summarization of a finished ``python -m llm.hnlm`` step ({} when absent)."""
    path = Path(profiles_dir or "") / f"{step}.jsonl"
    if not profiles_dir or not path.is_file():
        return {}
    records = map(json.loads, path.read_text().splitlines())
    return {r["subject"]: r["summarization"] or "None" for r in records}


@dataclass
class Records:
    """What the step works on: the training records (a sample of the pairs) and the query
    of every positive training pair (the vectors hnlmrec reads are written for all)."""

    train: list[Record]
    queries: list[tuple[str, str, str]]  # (user id, item id, query) of every positive pair
    about: dict


def mixgcf_records(cfg: SCFTConfig, chunk: int = 4096) -> Records:
    """The records of a trained MixGCF run (module docstring): MixGCF's synthesized negative
    of each training record computed once (seeded), ``chunk`` pairs at a time."""
    from model import categorical_draws
    from recommenders.bpr import unseen_weights
    from recommenders.mixgcf import mixgcf_negatives, pool_layers
    from runs.trained import load_trained
    run = load_trained(Path(cfg.mixgcf_run), cfg.dataset, cfg.data_dir, "--mixgcf_run",
                       model="mixgcf", unfinished_flag=None if cfg.allow_unfinished_base
                       else "--allow_unfinished_base")
    g, pool, U = run.graphs, run.config.settings.pool, run.graphs.num_users
    users, items = g.train.users[g.is_pos], g.train.items[g.is_pos]
    picked = torch.arange(users.numel())
    if cfg.max_records and cfg.max_records < picked.numel():
        order = torch.randperm(picked.numel(), generator=torch.Generator().manual_seed(cfg.seed))
        picked = order[:cfg.max_records].sort().values
    weights = unseen_weights(g)
    # one seeded stream each for the candidates, the mixing and the random negatives: the
    # draws do not depend on the chunk size
    cand_g, alpha_g, rand_g = (torch.Generator().manual_seed(cfg.seed + k) for k in range(3))
    with torch.no_grad():
        layers = run.model.layers(g.norm_adj)  # (U+I, L+1, d)
        pooled = pool_layers(layers, pool)
        synth, randoms = [], []
        for part in picked.split(chunk):
            u, i = users[part], items[part]
            cands = categorical_draws(weights, u, cfg.candidates, cand_g)
            alpha = torch.rand(u.numel(), 1, layers.size(1), generator=alpha_g)
            synth.append(mixgcf_negatives(layers[u], layers[i + U],
                                          layers[cands.view(-1, 1, cfg.candidates) + U], alpha,
                                          pool)[0][:, 0])
            randoms.append(categorical_draws(weights, u, 1, rand_g)[:, 0])
        synth, randoms = torch.cat(synth), torch.cat(randoms)
    user_prof, item_prof = read_profiles(cfg.profiles_dir, "users"), read_profiles(
        cfg.profiles_dir, "items")
    user_ids, item_ids = g.user_ids, g.item_ids

    def query(u: int, i: int) -> tuple[str, str, str]:
        uid, iid = str(user_ids[u]), str(item_ids[i])
        return uid, iid, query_text(pooled[u], user_prof.get(uid, "None"), pooled[U + i],
                                    item_prof.get(iid, "None"))
    queries = [query(u, i) for u, i in zip(users.tolist(), items.tolist())]
    train = [Record(*queries[k], vector_text(synth[n]), vector_text(pooled[U + randoms[n]]))
             for n, k in enumerate(picked.tolist())]
    about = dict(mixgcf_run=str(cfg.mixgcf_run), mixgcf_run_state=run.record(), pool=pool, candidates=cfg.candidates,
                 pairs=len(queries), training_records=len(train),
                 profiles=bool(user_prof or item_prof),
                 inputs_git_blob={r.role: r.git_blob for r in run.inputs})
    return Records(train, queries, about)


def run(cfg: SCFTConfig, log=print) -> dict:
    """Records -> LoRA training -> the query embeddings as a vector file (+ manifest)."""
    if not (cfg.mixgcf_run and cfg.model):
        raise DataError("--mixgcf_run and --model (a local Hugging Face model) are required")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    began = time.perf_counter()
    records = mixgcf_records(cfg)
    log(f"{cfg.dataset}: {len(records.train)} training records of {len(records.queries)} "
        f"positive pairs from {cfg.mixgcf_run}")
    encoder = Encoder(cfg)
    cut = encoder.truncated([r.query for r in records.train], as_query=True)
    if cut:
        log(f"warning: {cut} of {len(records.train)} queries are longer than --max_len_query "
            f"{cfg.max_len_query} tokens and lose their end")
    losses = train(encoder, records.train, cfg, log)
    vectors = infer(encoder, [q for _, _, q in records.queries])
    output = Path(cfg.output) if cfg.output else Path(cfg.mixgcf_run) / "scft_negatives.npz"
    about = dict(step="scft", model=cfg.model, loss=cfg.loss, truncated_queries=cut,
                 **records.about)
    write_pair_vectors(output, [u for u, _, _ in records.queries],
                       [i for _, i, _ in records.queries], vectors, about)
    manifest = dict(about, config=asdict(cfg), output=str(output), steps=len(losses),
                    first_loss=losses[0] if losses else None,
                    last_loss=losses[-1] if losses else None,
                    dimension=int(vectors.shape[1]), seconds=round(time.perf_counter() - began, 1))
    atomic_write_text(output.with_name(output.stem + ".manifest.json"),
                      json.dumps(manifest, indent=2, default=str) + "\n")
    log(f"wrote {output}: {len(vectors)} vectors of dimension {vectors.shape[1]}")
    return manifest


def parse_args(argv=None) -> SCFTConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = {"mixgcf_run": "run folder of a trained --model mixgcf (the labels)",
             "allow_unfinished_base": "use a --mixgcf_run that did not finish as its best.pt "
                                      "stands (the manifest says so)",
             "model": "local Hugging Face causal LM (directory)",
             "profiles_dir": "python -m llm.hnlm's folder with items.jsonl / users.jsonl",
             "output": "default: <mixgcf_run>/scft_negatives.npz",
             "max_records": "a seeded sample of this many positive pairs (default: all)",
             "loss": "/".join(LOSSES), "dtype": "float32/float16/bfloat16",
             "max_grad_norm": "clip the gradients' total norm to this (0: off)"}
    add_dataclass_flags(p, SCFTConfig, helps)
    return SCFTConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
