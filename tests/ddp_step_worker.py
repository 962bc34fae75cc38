"""One ReFINe++ step's gradients under torchrun (used by tests/test_distributed.py).

    torchrun --standalone --nproc_per_node 2 tests/ddp_step_worker.py DATA_DIR DATASET OUT.pt

Every rank builds the same float64 model, batch and negatives (same seed), computes its
part of the loss (distributed.Shard), and the gradients are summed with the real all-reduce;
rank 0 saves {parameter name: gradient} and the summed loss value for each mode.
"""
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from runs import distributed  # noqa: E402
from recommenders import base, make_config, refine_plus  # noqa: E402
from model import ReFINePlus  # noqa: E402
from conftest import step_rows  # noqa: E402  (this script's folder is on sys.path)

MODES = (("shared", "batch"), ("per_user", "user_negatives"))


def step(graphs, config, shard=None):
    """Seeded model, batch and negatives; returns (loss value, model with gradients)."""
    torch.manual_seed(7)
    model = ReFINePlus(graphs.num_users, graphs.num_items).double()
    batch = torch.randperm(len(graphs.train))[:step_rows(len(graphs.train))]
    pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
    negatives = refine_plus.draw_negatives(pos_users, graphs,
                                           refine_plus.num_negatives(graphs.num_items),
                                           config.settings.real_neg_samp_prob,
                                           config.settings.negatives == "shared")
    loss, value, _ = refine_plus.loss_of(model, graphs, batch, negatives, config, shard)
    loss.backward()
    return value, model


def load_graphs(data_dir, dataset):
    graphs = base.build_graphs(dataloader.load_dataset(data_dir, dataset, "augment"), "cpu")
    graphs = dataclasses.replace(graphs, norm_adj=graphs.norm_adj.double())
    return graphs


def main():
    data_dir, dataset, out = sys.argv[1:4]
    torch.set_num_threads(1)
    shard = distributed.init(torch.device("cpu"))
    graphs = load_graphs(data_dir, dataset)
    result = {}
    for negatives, ae_input in MODES:
        config = make_config(negatives=negatives, ae_input=ae_input)
        value, model = step(graphs, config, shard)
        refine_plus.sync_gradients(model)
        torch.distributed.all_reduce(value)
        result[negatives, ae_input] = {"value": value,
                                       "grads": {k: p.grad for k, p in model.named_parameters()}}
    if shard.rank == 0:
        torch.save({"world": shard.world, "result": result}, out)
    distributed.finish()


if __name__ == "__main__":
    main()
