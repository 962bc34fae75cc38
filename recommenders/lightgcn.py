"""LightGCN (``--model lightgcn``; He et al. 2020): LightGCN on the positive rows, BPR with
one negative per positive, uniform over the items the user has no train-file row with
(positive, confirmed negative or neutral: the rows evaluation masks anyway)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import recommenders.llm_augmentation as augmentation
from recommenders.base import PAPER_DEPTH, Graphs, Recommender, adam, build_gcn, lambda_reg
from recommenders.base import GCN_SPACE, log_uniform  # tune.py
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
    settings, triples = config.settings, graphs.augmented
    weights = unseen_weights(graphs)
    extra = {"prune": (settings.prune_drop, settings.prune_keep)}
    if triples is not None and settings.augment_mode == "rows":
        extra.update(augment_rows=triples, augment_weight=settings.augment_weight)
    elif triples is not None:  # edges: i- is the user's fixed hard negative
        hard = torch.full((graphs.num_users,), -1, dtype=torch.long, device=weights.device)
        hard[triples.users.to(weights.device)] = triples.neg.to(weights.device)
        extra.update(hard_negative=hard)
    return bpr_sampling(graphs, weights, "every item has a training row", **extra)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "lightgcn"), ("lambda_reg", config.settings.lambda_reg),
                *augmentation.header(config)]


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**GCN_SPACE, "lambda_reg": log_uniform(1e-6, 1e-2)}

RECOMMENDER = Recommender("lightgcn", Settings, positives_graph=True, build=build_gcn,
                          make_optimizer=adam, prepare=prepare, train_epoch=bpr_epoch,
                          header=header, dataset_defaults=PAPER_DEPTH,
                          transform=augmentation.transform,
                          search_space=SEARCH_SPACE)
