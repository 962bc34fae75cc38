"""--model hnlmrec: alpha = 0 and no alignment train exactly as LightGCN; the mixing and the
alignment term by hand; masked rows; the frozen adapter; bad vector files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_main, synthetic_rows, write_split_folder
from data.vectors import write_pair_vectors


def write_data(tmp_path):
    data = tmp_path / "data"
    write_split_folder(data, "Synth", *synthetic_rows())
    return data


def write_vectors(path, pairs, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    write_pair_vectors(path, [u for u, _ in pairs], [i for _, i in pairs],
                       rng.normal(size=(len(pairs), dim)), {"by": "test"})
    return path


def train_pairs():
    train, _, _ = synthetic_rows()
    return [(str(u), str(i)) for u, i, r in train if r >= 4]


def epochs_of(result, name):
    return [json.loads(line) for line in open(result / "Synth" / name / "epochs.jsonl")]


def runs_of(tmp_path, data, *variants):
    out = []
    for name, extra in variants:
        rc, result = run_main(["--dataset", "Synth", "--data_dir", str(data), "--epochs", "3",
                               "--batch_size", "64", *extra], tmp_path, name)
        assert rc == 0
        out.append([{k: v for k, v in e.items() if not k.endswith("_s")}
                    for e in epochs_of(result, name)])
    return out


def test_alpha_zero_without_alignment_is_lightgcn(tmp_path):
    data = write_data(tmp_path)
    vectors = write_vectors(tmp_path / "neg.npz", train_pairs())
    light, hnlm = runs_of(tmp_path, data, ("light", ["--model", "lightgcn", "--layers", "3"]),
                          ("hnlm", ["--model", "hnlmrec", "--negative_file", str(vectors),
                                    "--alpha", "0", "--align_weight", "0"]))
    assert light == hnlm and len(light) == 3  # hnlmrec's default is L = 3
    mixed, = runs_of(tmp_path, data, ("mixed", ["--model", "hnlmrec", "--negative_file",
                                                str(vectors)]))
    assert mixed != light  # the default alpha and alignment change the training


def test_rows_without_a_vector_keep_the_random_negative(tmp_path):
    data = write_data(tmp_path)
    vectors = write_vectors(tmp_path / "other.npz", [("999", "1"), ("1", "999")])
    light, hnlm = runs_of(tmp_path, data, ("light", ["--model", "lightgcn", "--layers", "3"]),
                          ("hnlm", ["--model", "hnlmrec", "--negative_file", str(vectors),
                                    "--alpha", "0.5"]))
    assert light == hnlm  # masked: no row mixes, no row has an alignment term
    log = (tmp_path / "result" / "Synth" / "hnlm" / "train.log").read_text()
    assert "other.npz: vectors for 0 of " in log and "2 pair(s) of other ids" in log
    assert "input negative_file: " in log


def test_half_the_rows_with_vectors_and_the_variants_train(tmp_path):
    data = write_data(tmp_path)
    pairs = train_pairs()
    vectors = write_vectors(tmp_path / "half.npz", pairs[::2])
    light, = runs_of(tmp_path, data, ("light", ["--model", "lightgcn", "--layers", "3"]))
    base = ["--model", "hnlmrec", "--negative_file", str(vectors), "--alpha", "0.5"]
    variants = runs_of(tmp_path, data, ("mask", base),
                       ("random", base + ["--missing", "random"]),
                       ("hinge", base + ["--rank_loss", "hinge"]),
                       ("relu", base + ["--adapter_final_relu", "on"]))
    assert all(v != light for v in variants)
    assert len({json.dumps(v) for v in variants}) == 4  # each flag changes the training
    log = (tmp_path / "result" / "Synth" / "mask" / "train.log").read_text()
    assert f"half.npz: vectors for {len(pairs[::2])} of {len(pairs)} positive rows" in log


def test_hinge_rank_loss_and_final_relu_by_hand():
    from recommenders import make_config
    from recommenders.hnlmrec import HNLMRecGCN, hnlm_batch_loss

    class Graphs:
        num_users, num_items = 2, 3
        norm_adj = torch.eye(5).to_sparse_csr()

    model = HNLMRecGCN(2, 3, 4, 1, input_dim=6, final_relu=True, seed=1)
    h = torch.randn(2, 6)
    assert (model.adapter(h) >= 0).all() and isinstance(model.adapter[-1], torch.nn.ReLU)
    config = make_config(model="hnlmrec", negative_file="x.npz", alpha=0.0, lambda_reg=0.0,
                         align_weight=0.0, rank_loss="hinge")
    users, items, negs = torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([1, 1])
    loss = hnlm_batch_loss(model, Graphs, users, items, negs, h, torch.tensor([True, True]),
                           config)
    e = model.gcn.embedding.weight.detach()
    s_pos = torch.stack([e[0] @ e[2], e[1] @ e[4]])
    s_neg = torch.stack([e[0] @ e[3], e[1] @ e[3]])
    torch.testing.assert_close(loss.detach(), (s_neg - s_pos + 0.3).clamp_min(0).mean())


def test_mixed_negative_and_alignment_by_hand():
    from recommenders import make_config
    from recommenders.hnlmrec import HNLMRecGCN, hnlm_batch_loss

    class Graphs:  # what the loss reads
        num_users, num_items = 2, 3
        norm_adj = torch.eye(5).to_sparse_csr()

    torch.manual_seed(0)
    model = HNLMRecGCN(2, 3, 4, 1, input_dim=6, final_relu=False, seed=1)
    config = make_config(model="hnlmrec", negative_file="x.npz", alpha=0.25, lambda_reg=0.0,
                         align_weight=0.5, align_temperature=0.2)
    users, items, negs = torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([1, 1])
    h, has = torch.randn(2, 6), torch.tensor([True, False])
    loss = hnlm_batch_loss(model, Graphs, users, items, negs, h[has], has, config)
    e = model.gcn.embedding.weight.detach()  # identity graph: E = (E0 + E0) / 2 = E0
    eu, ei = e[:2], e[2:]
    h_hat = model.adapter(h).detach()
    neg0 = 0.25 * h_hat[0] + 0.75 * ei[1]  # row 0 mixes; row 1 has no vector
    s_pos = torch.stack([eu[0] @ ei[0], eu[1] @ ei[2]])
    s_neg = torch.stack([eu[0] @ neg0, eu[1] @ ei[1]])
    rank = F.softplus(s_neg - s_pos).mean()
    align = F.softplus((F.cosine_similarity(eu[0], h_hat[0], dim=0)
                        - F.cosine_similarity(eu[0], ei[0], dim=0)) / 0.2)
    torch.testing.assert_close(loss.detach(), rank + 0.5 * align)


def test_in_batch_alignment_by_hand():
    """--cl_inbatch on: row r's InfoNCE has c+ against its own and every other row's h^."""
    from recommenders import make_config
    from recommenders.hnlmrec import HNLMRecGCN, hnlm_batch_loss

    class Graphs:
        num_users, num_items = 3, 4
        norm_adj = torch.eye(7).to_sparse_csr()

    model = HNLMRecGCN(3, 4, 4, 1, input_dim=5, final_relu=False, seed=3)
    users, items, negs = torch.tensor([0, 1, 2]), torch.tensor([0, 3, 1]), torch.tensor([2, 2, 3])
    h, has = torch.randn(3, 5, generator=torch.Generator().manual_seed(4)), torch.ones(3).bool()
    losses = {}
    for flag in ("off", "on"):
        config = make_config(model="hnlmrec", negative_file="x.npz", alpha=0.0, lambda_reg=0.0,
                             align_weight=1.0, align_temperature=0.5, cl_inbatch=flag)
        losses[flag] = hnlm_batch_loss(model, Graphs, users, items, negs, h, has,
                                       config).detach()
    e = model.gcn.embedding.weight.detach()
    eu, ei, h_hat = e[:3], e[3:], model.adapter(h).detach()
    rank = F.softplus(torch.stack([eu[r] @ ei[negs[r]] - eu[r] @ ei[items[r]]
                                   for r in range(3)])).mean()
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm())) / 0.5
    own, batch = [], []
    for r in range(3):
        pos = math.exp(cos(eu[r], ei[items[r]]))
        own.append(-math.log(pos / (pos + math.exp(cos(eu[r], h_hat[r])))))
        batch.append(-math.log(pos / (pos + sum(math.exp(cos(eu[r], h_hat[k]))
                                                for k in range(3)))))
    torch.testing.assert_close(losses["off"], rank + sum(own) / 3)
    torch.testing.assert_close(losses["on"], rank + sum(batch) / 3)


def test_frozen_adapter_does_not_move(tmp_path):
    data = write_data(tmp_path)
    vectors = write_vectors(tmp_path / "neg.npz", train_pairs())
    states = {}
    for name, frozen in (("frozen", "on"), ("trained", "off")):
        rc, result = run_main(["--model", "hnlmrec", "--dataset", "Synth", "--data_dir",
                               str(data), "--epochs", "2", "--batch_size", "64",
                               "--negative_file", str(vectors), "--freeze_adapter", frozen],
                              tmp_path, name)
        assert rc == 0
        states[name] = torch.load(result / "Synth" / name / "last.pt",
                                  weights_only=False)["model"]
    from recommenders.hnlmrec import HNLMRecGCN
    fresh = HNLMRecGCN(30, 40, 64, 4, 8, False, seed=2024).state_dict()
    key = "adapter.0.weight"
    assert torch.equal(states["frozen"][key], fresh[key])
    assert not torch.equal(states["trained"][key], fresh[key])


@pytest.mark.parametrize("content", [None, b"not an npz"])
def test_a_missing_or_damaged_vector_file_is_one_line(tmp_path, capsys, content):
    data = write_data(tmp_path)
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    extra = ["--negative_file", str(path)]
    rc, _ = run_main(["--model", "hnlmrec", "--dataset", "Synth", "--data_dir", str(data),
                      "--epochs", "1", *extra], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "bad.npz" in err[-1] and "Traceback" not in "\n".join(err)


def test_no_vector_file_is_refused(tmp_path, capsys):
    data = write_data(tmp_path)
    rc, _ = run_main(["--model", "hnlmrec", "--dataset", "Synth", "--data_dir", str(data),
                      "--epochs", "1"], tmp_path)
    assert rc != 0 and "--negative_file" in capsys.readouterr().err
