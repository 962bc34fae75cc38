"""What every recommender shares: the graphs it trains on, the spec a model file fills in
(its settings, graph, model, optimizer, sampling state, epoch and log header), and the
mini-batch epoch of the BPR-style models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

import dataloader
from data.errors import UserError
from dataloader import Interactions, RecData, RowIndex
from model import LightGCNRecommender

if TYPE_CHECKING:
    from runs.config import Config


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, impossible sampling)."""


def setting(default, help: str, type=None, choices=None):  # noqa: A002 - argparse's names
    """A field of a model's settings dataclass; it becomes the flag ``--<name>``."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


def setting_lines(settings, *names: str) -> list[tuple[str, Any]]:
    """The log header's ``(name, value)`` lines of the given settings."""
    return [(name, getattr(settings, name)) for name in names]


def on_off(default: str, help_text: str):
    """A setting whose flag takes on/off."""
    return setting(default, help_text, choices=("on", "off"))


@dataclass(frozen=True)
class Recommender:
    """One model, as its file declares it (see docs/extending.md).

    ``settings``: the dataclass of its own flags (their defaults: the field defaults);
    ``defaults``: its defaults of general settings (learning_rate, layers, ...) where they
    differ from Config's; ``dataset_defaults``: dataset -> the defaults, general or its own,
    that differ on that dataset. Nothing else declares a default (make_config merges them,
    ``main.py --model X -h`` prints them). ``prepare(graphs, config)`` builds the sampling
    state once per run (raising TrainingError when sampling is infeasible);
    ``train_epoch(model, optimizer, graphs, config, epoch, state, shard=None)`` returns the
    epoch's loss; ``header(config)`` gives (lines for the reference's block, our lines) of
    the log header; ``distributed``: None when the model does not train under torchrun,
    else a function of its settings giving why these settings cannot (or None)."""

    name: str
    settings: type
    positives_graph: bool  # propagate over the positive rows only (else all of T)
    build: Callable[[Graphs, Config], nn.Module]
    make_optimizer: Callable[[nn.Module, Config], torch.optim.Optimizer]
    prepare: Callable[[Graphs, Config], Any]
    train_epoch: Callable[..., float]
    header: Callable[[Config], tuple[list, list]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dataset_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    check: Callable[[Config], None] = lambda config: None  # cross-setting checks
    # (data, config, warn) -> data, before the graphs are built (an LLM augmentation)
    transform: Callable[..., RecData] = lambda data, config, warn: data
    distributed: Callable[[Any], str | None] | None = None
    # what tune.py searches: setting name (general or the model's own) -> a range below
    search_space: Mapping[str, tuple] = field(default_factory=dict)


def log_uniform(low: float, high: float) -> tuple:
    """A search range sampled uniformly in log scale (learning rates, L2 weights)."""
    return ("log", low, high)


def uniform(low: float, high: float) -> tuple:
    return ("float", low, high)


def integer(low: int, high: int, log: bool = False) -> tuple:
    return ("int", low, high, log)


def one_of(*options) -> tuple:
    return ("choice", options)


# every model's search starts from these (its file adds its own)
LEARNING_RATE = {"learning_rate": log_uniform(1e-4, 1e-2)}
GCN_SPACE = {**LEARNING_RATE, "layers": integer(1, 4)}


# the papers' LightGCN depth where it is not 4 (ReFINe++'s Amazon_Books runs)
PAPER_DEPTH = {"Amazon_Books": {"layers": 2}}


# ----------------------------------------------------------------------------- graphs

@dataclass(frozen=True)
class Graphs:
    """What training reads, on the run's device, built once per run: the propagation graph,
    T and its row indexes, the id maps. Evaluation's indexes are ``EvalIndex``."""

    norm_adj: torch.Tensor
    train: Interactions  # T in file order
    is_pos: torch.Tensor
    t_by_user: RowIndex  # items of each user in T (sampling weight 0)
    neg_by_user: RowIndex  # confirmed negatives per user (sampling weight gamma)
    neg_by_item: RowIndex  # confirmed negatives per item (item AE input)
    seen_by_user: RowIndex  # every train-file row (T and neutral): never a sampled negative
    num_users: int
    num_items: int
    item_ids: np.ndarray | None = None  # the dataset's item id of each item index
    user_ids: np.ndarray | None = None  # the dataset's user id of each user index
    # --augment_file's (user, favourite, least favourite) rows: recommenders.llm_augmentation's
    # Triples (typed loosely: that module builds on this one)
    augmented: Any = None


@dataclass(frozen=True)
class EvalIndex:
    """What evaluation reads: the rows masked when ranking and each split's truth."""

    seen_by_user: RowIndex  # every train-file row: masked on validation and test
    seen_or_valid_by_user: RowIndex  # --mask_valid_in_test: validation rows masked too
    valid_by_user: RowIndex
    test_by_user: RowIndex
    popularity: torch.Tensor  # (I,) each item's positive training rows (popularity metrics)
    activity: torch.Tensor  # (U,) each user's positive training rows (activity breakdown)
    dislikes_by_user: RowIndex | None = None  # a dislikes variant's held-out rows (disliked@k)

    def test_mask(self, mask_valid_in_test: bool) -> RowIndex:
        return self.seen_or_valid_by_user if mask_valid_in_test else self.seen_by_user


def _rows(users, items, n: int, device) -> RowIndex:
    return RowIndex.build(users, items, n).to(device)


def _seen(data: RecData) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items) of every train-file row: T and the neutral rows."""
    return (torch.cat([data.train.users, data.neutral.users]),
            torch.cat([data.train.items, data.neutral.items]))


def build_graphs(data: RecData, device, positives_graph: bool = False) -> Graphs:
    """``positives_graph``: propagate over the positive rows only (LightGCN, ReFINe);
    otherwise over all of T (ReFINe++). The sampling indexes are the same."""
    U, I = data.num_users, data.num_items
    neg = data.negatives
    return Graphs(
        norm_adj=dataloader.build_norm_adj(data.positives if positives_graph else data.train,
                                           U, I).to(device),
        train=data.train.to(device), is_pos=data.train_is_pos.to(device),
        t_by_user=_rows(data.train.users, data.train.items, U, device),
        neg_by_user=_rows(neg.users, neg.items, U, device),
        neg_by_item=_rows(neg.items, neg.users, I, device),
        seen_by_user=_rows(*_seen(data), U, device),
        num_users=U, num_items=I, item_ids=data.item_ids, user_ids=data.user_ids,
        augmented=data.augmented)


def build_eval_index(data: RecData, device, seen_by_user: RowIndex | None = None) -> EvalIndex:
    """``seen_by_user``: the training graphs' own (the same rows), to build it only once."""
    U = data.num_users
    seen_users, seen_items = _seen(data)
    return EvalIndex(
        seen_by_user=seen_by_user if seen_by_user is not None
        else _rows(seen_users, seen_items, U, device),
        seen_or_valid_by_user=_rows(torch.cat([seen_users, data.validation.users]),
                                    torch.cat([seen_items, data.validation.items]), U, device),
        valid_by_user=_rows(data.validation.users, data.validation.items, U, device),
        test_by_user=_rows(data.test.users, data.test.items, U, device),
        popularity=torch.bincount(data.positives.items, minlength=data.num_items).to(device),
        activity=torch.bincount(data.positives.users, minlength=U).to(device),
        dislikes_by_user=None if data.test_dislikes is None else _rows(
            data.test_dislikes.users, data.test_dislikes.items, U, device))


# ------------------------------------------------------------------------------ epochs

def epoch_loss(losses: list[torch.Tensor], sizes: list[int], epoch: int) -> float:
    """sum(loss_b * size_b) / sum(size_b) over an epoch's batches; a non-finite batch loss
    stops the run, naming the epoch and batch (last.pt still holds the previous epoch)."""
    losses_t = torch.stack(losses)
    finite = torch.isfinite(losses_t)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        kept = (f"the last good state is last.pt of epoch {epoch - 1}" if epoch > 1 else
                "no epoch finished (try a lower --learning_rate)")
        raise TrainingError(f"non-finite loss at epoch {epoch}, batch {bad + 1}; stopped: "
                            f"{kept}")
    sizes_t = torch.tensor(sizes, dtype=losses_t.dtype, device=losses_t.device)
    return float((losses_t * sizes_t).sum() / sizes_t.sum())


def batches(num_rows: int, batch_size: int, device, progress=None):
    """The index batches of one shuffled pass over num_rows rows (``progress``: a tqdm-like
    bar advanced once per batch, or None)."""
    perm = torch.randperm(num_rows, device=device)
    if progress is not None:
        progress.reset(total=-(-num_rows // batch_size))
    for start in range(0, num_rows, batch_size):
        yield perm[start:start + batch_size]
        if progress is not None:
            progress.update(1)


def minibatch_epoch(optimizer: torch.optim.Optimizer, num_rows: int, batch_size: int,
                    epoch: int, device, step_loss, progress=None, drop_last=False) -> float:
    """The BPR-style epoch: shuffle num_rows rows, then per batch of row indices one
    optimizer step on ``step_loss(batch)``. Returns sum(loss_b |B_b|) / sum |B_b|.
    ``drop_last``: skip the last partial batch (kept when it is the only one)."""
    losses, sizes = [], []
    for batch in batches(num_rows, batch_size, device, progress):
        if drop_last and sizes and batch.numel() < batch_size:
            continue
        loss = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(batch.numel())
    return epoch_loss(losses, sizes, epoch)


def no_shard(name: str, shard) -> None:
    if shard is not None:
        raise TrainingError(f"--model {name} does not train distributed")


def build_gcn(graphs: Graphs, config: Config) -> nn.Module:
    return LightGCNRecommender(graphs.num_users, graphs.num_items, config.embedding_dim,
                            config.layers)


def adam(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam; the L2 term is part of the loss (it covers the batch's nodes only)."""
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def gamma():
    """The reference's --real_neg_samp_prob: the sampling weight of a confirmed negative."""
    return setting(1.5, "gamma, sampling weight of a user's confirmed negatives")


def lambda_reg(default: float):
    return setting(default, "L2 weight; the model's file says which embeddings it "
                            "covers", type=float)
