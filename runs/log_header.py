"""The header of a run's train.log: the reference's hyper-parameter block (same names,
same order), then ours, the input files, and the data block (counts, protocol)."""
from __future__ import annotations

import torch

from data import provenance
from dataloader import RecData
from recommenders import MODELS
from runs.config import Config
from runs.log_format import RULE


def header_lines(config: Config, device, inputs: list[provenance.FileRecord]) -> list[str]:
    """The reference's hyper-parameter block (same names, same order), then ours (the
    model's own from its file), then one line per input file."""
    extra_reference, ours = MODELS[config.model].header(config)
    reference = [("ramdom_seed", config.random_seed), ("gpu_id", config.gpu_id),
                 ("dataset", config.dataset), ("dataset_augment", config.dataset_augment),
                 ("batch_size", config.batch_size), ("test_batch_size", config.test_batch_size),
                 ("embedding_dim", config.embedding_dim), ("layers", config.layers),
                 ("learning_rate", config.learning_rate),
                 ("evaluation_step", config.evaluation_step),
                 ("early_stopping_step", config.early_stopping_step),
                 ("top_k", list(config.top_k)), ("epochs", config.epochs),
                 *extra_reference, ("path_name", config.path_name)]
    ours = [*ours, ("mask_valid_in_test", config.mask_valid_in_test), ("device", device),
            ("threads", torch.get_num_threads())]
    if config.allow_split_overlap:
        ours.append(("allow_split_overlap", True))
    return [RULE, *(f"{k}: {v}" for k, v in reference + ours),
            *(r.header_line() for r in inputs), RULE, ""]


def data_lines(config: Config, data: RecData) -> list[str]:
    trained_on = data.positives if MODELS[config.model].positives_graph else data.train
    return [RULE, "data loading...", f"train set: train_{config.dataset_augment}",
            f"user: {data.num_users},  item: {data.num_items}",
            f"train interations: {len(trained_on)}",
            f"valid interations: {len(data.validation)}",
            f"test interations: {len(data.test)}",
            *([f"protocol: {data.protocol['protocol']} split {data.protocol['split']} (no "
               f"validation split: {config.epochs} epochs, the test metrics every "
               f"{config.evaluation_step} and at the last)"] if data.protocol else []),
            "done!", RULE]
