"""LightGCN (``--model lightgcn``; He et al. 2020): LightGCN on the positive rows, BPR with
one negative per positive, uniform over the items the user has no train-file row with
(positive, confirmed negative or neutral: the rows evaluation masks anyway)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import recommenders.augmentation as augmentation
from recommenders.base import Graphs, Recommender, adam, build_gcn, lambda_reg
from recommenders.bpr import BPRSampling, bpr_epoch, bpr_sampling, unseen_weights
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(1e-4)
    augment_file: str | None = augmentation.file_setting()
    augment_mode: str = augmentation.mode_setting("rows")
    augment_weight: float = augmentation.weight_setting()
    prune_drop: float = augmentation.prune_drop_setting()
    prune_keep: str = augmentation.prune_keep_setting()

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"))
        augmentation.check_settings(self)


def prepare(graphs: Graphs, config: Config) -> BPRSampling:
    weights = unseen_weights(graphs)
    state = bpr_sampling(graphs, weights, "every item has a training row")
    state.prune = (config.prune_drop, config.prune_keep)
    triples = graphs.augmented
    if triples is not None and config.augment_mode == "rows":
        state.augment_rows, state.augment_weight = triples, config.augment_weight
    elif triples is not None:  # edges: i- is the user's fixed hard negative
        state.hard_negative = torch.full((graphs.num_users,), -1, dtype=torch.long,
                                         device=weights.device)
        state.hard_negative[triples.users.to(weights.device)] = triples.neg.to(weights.device)
    return state


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "lightgcn"), ("lambda_reg", config.lambda_reg),
                *augmentation.header(config)]


RECOMMENDER = Recommender("lightgcn", Settings, positives_graph=True, build=build_gcn,
                          make_optimizer=adam, prepare=prepare, train_epoch=bpr_epoch,
                          header=header, transform=augmentation.transform)
