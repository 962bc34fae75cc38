"""Our pngnn and siren against the authors' own model code, on the same weights and batch.

    git clone https://github.com/hliei/Recommender-System pngnn_code
    git clone https://github.com/cw-seo/SiReN-reco siren_code
    python bench/authors_code_agreement.py --pngnn_repo pngnn_code --siren_repo siren_code

Imports their ``pngnn.py`` (class PNGNN) and ``siren.py`` (class SiReN) from the given
checkouts (they need torch_geometric), builds ours with their initial weights copied in,
and compares, in float64 with dropout off (eval mode), the loss of one batch (their
``forward``: rows with rating - 3.5 as w, sampled negatives) and the gradients of every
table and layer. Ours use the default settings (the code form, summed, L2 0.05), the
adjacency normalised in float64 as their LightGConv does. Nothing of their code is kept
in this repository; a printed max |difference| at rounding level is the agreement.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from recommenders import make_config, pngnn, signed, siren  # noqa: E402


def their_module(repo: str, name: str):
    sys.path.insert(0, str(Path(repo).resolve()))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def float64_adj(rows: dataloader.Interactions, num_users: int, num_items: int):
    n = num_users + num_items
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense[rows.users, rows.items + num_users] = 1.0
    dense[rows.items + num_users, rows.users] = 1.0
    deg = dense.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": noise
        warnings.simplefilter("ignore", UserWarning)
        return (inv[:, None] * dense * inv[None, :]).to_sparse_csr()


def compare(theirs, ours, pairs, batch, config, loss_fn, graphs) -> tuple:
    users, items, w, negatives = batch
    theirs.eval()
    ours.eval()
    num_users = graphs.num_users
    loss_theirs = theirs(users, items + num_users, w, negatives + num_users, "cpu")
    loss_ours = signed.signed_batch_loss(ours, graphs, users, items, w > 0, negatives, config,
                                         loss_fn)
    loss_theirs.backward()
    loss_ours.backward()
    grad = max(float((a.grad - b.grad).abs().max()) for a, b in pairs)
    return float(loss_theirs.detach()), float(loss_ours.detach()), grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pngnn_repo", required=True, help="a checkout of hliei/Recommender-System")
    p.add_argument("--siren_repo", required=True, help="a checkout of cw-seo/SiReN-reco")
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--rows", type=int, default=400)
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    U, I = args.users, args.items
    rng = np.random.default_rng(0)
    pairs = rng.choice(U * I, args.rows, replace=False)
    train = pd.DataFrame({"userId": pairs // I + 1, "movieId": pairs % I + 1,
                          "rating": rng.integers(1, 6, args.rows)})
    keep = train["rating"] > 3.5
    as_rows = lambda df: dataloader.Interactions(  # noqa: E731
        torch.tensor(df["userId"].values - 1), torch.tensor(df["movieId"].values - 1))
    pos_adj, neg_adj = float64_adj(as_rows(train[keep]), U, I), \
        float64_adj(as_rows(train[~keep]), U, I)
    graphs = SimpleNamespace(norm_adj=pos_adj, num_users=U)
    batch = (torch.tensor(train["userId"].values - 1),
             torch.tensor(train["movieId"].values - 1),
             torch.tensor(train["rating"].values - 3.5),
             torch.tensor(rng.integers(0, I, (args.rows, 40))))
    print(f"{args.rows} rows ({int(keep.sum())} positive), {U} users, {I} items, 40 negatives "
          f"each, d 16, 3 layers, float64")
    print("| model | their loss | our loss | max abs grad difference |\n|---|---|---|---|")

    torch.manual_seed(0)
    theirs = their_module(args.pngnn_repo, "pngnn").PNGNN(train, U, I, 3.5, num_layers=3,
                                                           dim=16, reg=0.05, device="cpu")
    core = pngnn.PositiveNegativeGCN(U, I, 16, 3, dropout=0.5, neg_input="positive")
    ours = pngnn.WithNegativeGraph(core, neg_adj)
    att = core.attention
    with torch.no_grad():
        core.pos_gcn.embedding.weight.copy_(theirs.E1)
        core.neg_gcn.embedding.weight.copy_(theirs.E2)
    copy_attention(att, theirs)
    pairs_ = [(theirs.E1, core.pos_gcn.embedding.weight),
              (theirs.E2, core.neg_gcn.embedding.weight),
              (theirs.attn.weight, att.proj.weight), (theirs.q.weight, att.query.weight)]
    result = compare(theirs, ours, pairs_, batch, make_config(model="pngnn"),
                     pngnn.loss, graphs)
    print(f"| pngnn | {result[0]:.12f} | {result[1]:.12f} | {result[2]:.1e} |")

    torch.manual_seed(0)
    theirs = their_module(args.siren_repo, "siren").SiReN(train, U, I, 3.5, num_layers=3,
                                                           MLP_layers=2, dim=16, reg=0.05,
                                                           device="cpu")
    ours = siren.SignAwareGCN(U, I, 16, 3, dropout=0.5)
    with torch.no_grad():
        ours.gcn.embedding.weight.copy_(theirs.E)
        ours.neg_embedding.weight.copy_(theirs.E2)
        for k, layer in enumerate((ours.mlp[0], ours.mlp[3])):
            layer.weight.copy_(theirs.mlps[k].weight)
            layer.bias.copy_(theirs.mlps[k].bias)
    copy_attention(ours.attention, theirs)
    pairs_ = [(theirs.E, ours.gcn.embedding.weight), (theirs.E2, ours.neg_embedding.weight),
              (theirs.mlps[0].weight, ours.mlp[0].weight),
              (theirs.mlps[1].bias, ours.mlp[3].bias),
              (theirs.attn.weight, ours.attention.proj.weight)]
    result = compare(theirs, ours, pairs_, batch, make_config(model="siren"),
                     siren.loss, graphs)
    print(f"| siren | {result[0]:.12f} | {result[1]:.12f} | {result[2]:.1e} |")


def copy_attention(att, theirs) -> None:
    with torch.no_grad():
        att.proj.weight.copy_(theirs.attn.weight)
        att.proj.bias.copy_(theirs.attn.bias)
        att.query.weight.copy_(theirs.q.weight)


if __name__ == "__main__":
    main()
