"""ReFINe++ models and losses (docs/method.md). Pure: no I/O, no printing, graph given at
call time.

Notation: U users, I items, d = embedding size, E0 the (U+I) x d embedding table, E the
final LightGCN embeddings, s(u, i) = E_u · E_i.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A.

    The gradient w.r.t. x is A^T g = A g, so the backward is the same sparse product.
    torch's generic CSR backward materialises A^T first, which dominated the step time.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return spmm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, spmm(ctx.adj, grad)


def spmm(adj: Tensor, x: Tensor) -> Tensor:
    """adj @ x for a sparse CSR adj. On CPU, ``adj @ x`` zero-fills a result and then copies
    the product into it; addmm with beta=0 into an uninitialised tensor (beta=0: its
    contents are never read) writes the same numbers once, ~1 ms less per ML-1M product."""
    if x.device.type != "cpu" or adj.layout != torch.sparse_csr:
        return adj @ x
    out = torch.empty(adj.size(0), x.size(1), dtype=x.dtype)
    return torch.addmm(out, adj, x, beta=0, out=out)


class Propagation(nn.Module):
    """One LightGCN layer, x -> A x, for the pre-normalised adjacency A = D^-1/2 A D^-1/2 as a
    torch.sparse tensor: what PyG's ``LGConv(normalize=False)`` computes on it (the oracle
    in tests/test_oracles.py). ``symmetric_backward``: A is symmetric, so the gradient
    A^T g is the same cheap product (``_SymmetricSpMM``); else torch's generic backward.
    Written here rather than taken from PyG: importing torch_geometric pulls in its LLM
    helpers (and transformers), which training never needs."""

    def __init__(self, symmetric_backward: bool = True):
        super().__init__()
        self.symmetric_backward = symmetric_backward

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return _SymmetricSpMM.apply(adj, x) if self.symmetric_backward else adj @ x


class LightGCN(nn.Module):
    """E = mean(E0, ..., EK), E(k+1) = D^-1/2 A D^-1/2 E(k) (He et al. 2020)."""

    def __init__(self, num_nodes: int, embedding_dim: int = 64, num_layers: int = 4,
                 symmetric_backward: bool = True, init: str = "uniform"):
        super().__init__()
        self.embedding = nn.Embedding(num_nodes, embedding_dim)
        # xavier-uniform (ReFINe++); "normal": xavier-normal, the same variance (PN-GNN's and
        # SiReN's code)
        (nn.init.xavier_normal_ if init == "normal" else nn.init.xavier_uniform_)(
            self.embedding.weight)
        self.convs = nn.ModuleList(Propagation(symmetric_backward) for _ in range(num_layers))

    def forward(self, norm_adj: Tensor, propagate: Tensor | None = None) -> Tensor:
        """norm_adj: (U+I) x (U+I) sparse, already normalised. Returns E: (U+I) x d.

        ``propagate``: the table layer 1 propagates instead of E0 (E0 stays the layer-0
        term): E = mean(E0, A P, A^2 P, ...). None: P = E0, plain LightGCN."""
        x = self.embedding.weight
        out = x
        if propagate is not None:
            x = propagate
        for k, conv in enumerate(self.convs):
            x = conv(x, norm_adj)
            # the same sums in the same order; in place after the first (which must not
            # write into the embedding table), saving an allocation per layer
            out = out + x if k == 0 else out.add_(x)
        return out / (len(self.convs) + 1)

    def layers(self, norm_adj: Tensor) -> Tensor:
        """Every layer, unpooled: (U+I, K+1, d) with [:, k] = E(k) (MixGCF and SCFT read
        them layer by layer)."""
        x = self.embedding.weight
        out = [x]
        for conv in self.convs:
            x = conv(x, norm_adj)
            out.append(x)
        return torch.stack(out, 1)


class LightGCNRecommender(nn.Module):
    """A recommender on LightGCN: the nodes are the users then the items; ``forward`` gives
    the final embeddings split into (users U x d, items I x d). Alone it is the LightGCN
    and ReFINe baselines' model; ReFINe++ and the other baselines add parts to it."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4, symmetric_backward: bool = True):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.gcn = LightGCN(num_users + num_items, embedding_dim, num_layers, symmetric_backward)

    def forward(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        out = self.gcn(norm_adj)
        return out[:self.num_users], out[self.num_users:]


class DispreferenceAE(nn.Module):
    """Autoencoder of a binary dispreference row: in -> 600 -> 64 -> 600 -> in, sigmoid output."""

    def __init__(self, num_inputs: int, hidden_dim: int = 600, code_dim: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(num_inputs, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, num_inputs), nn.Sigmoid())
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)  # biases keep torch's default init

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (rows, in) dense. Returns (codes (rows, 64), reconstruction (rows, in))."""
        z = self.encoder(x)
        return z, self.decoder(z)


class ReFINePlus(LightGCNRecommender):
    """LightGCN over T plus the user AE (input: a user's row of X, length I) and the item
    AE (input: an item's column of X, length U)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4, symmetric_backward: bool = True):
        super().__init__(num_users, num_items, embedding_dim, num_layers, symmetric_backward)
        self.user_ae = DispreferenceAE(num_items, code_dim=embedding_dim)
        self.item_ae = DispreferenceAE(num_users, code_dim=embedding_dim)


# ------------------------------------------------------------------------------ losses

def sampled_softmax_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """L_ssm = mean_p log(1 + sum_j exp(s(u_p, j) - s(u_p, i_p))).

    pos_scores: (P,), neg_scores: (P, n). Computed as a logsumexp over [0, s_j - s_i],
    which is the same value without overflow.
    """
    diff = neg_scores - pos_scores.unsqueeze(1)
    return torch.logsumexp(torch.cat([diff.new_zeros(diff.size(0), 1), diff], 1), 1).mean()


def per_row_scores(queries: Tensor, table: Tensor, columns: Tensor) -> Tensor:
    """s[p, k] = <queries[p], table[columns[p, k]]>: each row's scores against its own
    columns. queries (P, d), table (I, d), columns (P, n) -> (P, n).

    Computed as the full (P, I) score matrix, one GEMM, then a gather. The plain form,
    einsum("pd,pnd->pn", queries, table[columns]), copies a (P, n, d) tensor and its backward
    scatter-adds P*n rows into the table's gradient; with n = I/10 (ReFINe++ per_user) the
    GEMM does 10x the multiplications and is still ~8x faster on CPU, in less memory. Same
    value up to float rounding (tests/test_oracles.py checks it and the gradients against
    the einsum).
    """
    return (queries @ table.t()).gather(1, columns)


def half_l2(tensors, weight: float) -> Tensor:
    """(weight / 2) * sum of squared entries of every tensor."""
    return weight / 2 * sum(t.pow(2).sum() for t in tensors)


def alignment_loss(e_users: Tensor, z_users: Tensor, e_items: Tensor, z_items: Tensor) -> Tensor:
    """L_align = MSE_mean(E_users, Z_users) + MSE_mean(E_items, Z_items); gradients reach both."""
    return F.mse_loss(e_users, z_users) + F.mse_loss(e_items, z_items)


def ae_terms_dense(ae: DispreferenceAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """Reference computation: (BCE_mean(AE(x), x) over all rows*in entries, codes of all rows).

    The slow, obvious version: kept as the oracle for ``ae_terms_sparse``.
    """
    z, recon = ae(x)
    return F.binary_cross_entropy(recon, x), z


def bce_forward(logits: Tensor, target: Tensor, row_weight: Tensor) -> tuple[Tensor, Tensor]:
    """(-sum_r w_r sum_j log(p_rj) clamped at -100, sigmoid(logits)) with p the sigmoid where
    the binary target is 1 and 1 - sigmoid where it is 0: torch's BCE value."""
    r = torch.sigmoid(logits)
    picked = torch.where(target > 0, r, 1.0 - r)
    per_row = torch.log(picked).clamp_min(-100.0).sum(1)
    return -(per_row * row_weight).sum(), r


def bce_backward(r: Tensor, target: Tensor, row_weight: Tensor, grad: Tensor) -> Tensor:
    """torch's BCE gradient (r - t) / max(r (1 - r), 1e-12) chained with the sigmoid's
    r (1 - r), times the row weight and the incoming gradient."""
    d = (1.0 - r) * r
    grad_logits = (r - target) / d.clamp_min(1e-12) * d
    return grad_logits * (row_weight * grad).unsqueeze(1)


class _SigmoidBCESum(torch.autograd.Function):
    """sum_r w_r sum_j BCE(sigmoid(z_rj), t_rj) for binary t, as torch computes it.

    Forward: the logs are clamped at -100 exactly as torch.binary_cross_entropy does
    (so saturated sigmoids give the same value). One fused pass instead of torch's scalar
    BCE kernel, which dominated the AE on CPU. ``kernels``: the (forward, backward) math,
    ``bce_forward`` / ``bce_backward`` or compiled versions of them.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, row_weight: Tensor, kernels) -> Tensor:
        value, r = kernels[0](logits, target, row_weight)
        ctx.save_for_backward(r, target, row_weight)
        ctx.backward_kernel = kernels[1]
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        r, target, row_weight = ctx.saved_tensors
        return ctx.backward_kernel(r, target, row_weight, grad), None, None, None


BCE_KERNELS = (bce_forward, bce_backward)


def sigmoid_bce_sum(logits: Tensor, target: Tensor, row_weight: Tensor,
                    kernels=BCE_KERNELS) -> Tensor:
    return _SigmoidBCESum.apply(logits, target, row_weight, kernels)


class _BinaryRowsTimesWeightT(torch.autograd.Function):
    """h[r] = sum over t with owner[t] = r of W[:, cols[t]]: the binary rows times W^T.

    A hand-written backward scatters into a dense grad of W's own layout; going through
    W.t() (embedding_bag, sparse mm) cost two transposed copies of W per step.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, owner: Tensor, cols: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(owner, cols)
        ctx.weight_shape = weight.shape
        out = weight.new_zeros(num_rows, weight.size(0))
        return out.index_add_(0, owner, weight.t()[cols])  # (num_rows, out_features)

    @staticmethod
    def backward(ctx, grad: Tensor):
        owner, cols = ctx.saved_tensors
        grad_weight = grad.new_zeros(ctx.weight_shape)
        grad_weight.index_add_(1, cols, grad[owner].t())
        return grad_weight, None, None, None


def ae_terms_sparse(ae: DispreferenceAE, rows: Tensor, owner: Tensor, cols: Tensor,
                    num_rows: int, row_range: tuple[int, int] | None = None,
                    kernels=BCE_KERNELS) -> tuple[Tensor, Tensor]:
    """Same value and gradients as ``ae_terms_dense`` on the binary num_rows x in matrix X
    whose non-zero rows are ``rows`` (distinct, m of them), with X[rows[owner[t]], cols[t]] = 1.

    Exact shortcuts: (1) a binary row times W1^T is the sum of the W1 columns it selects;
    (2) every all-zero row has the same code z0 = W2 relu(b1) + b2 and the
    same reconstruction r0, so its BCE sum -sum_j log(1 - r0_j) is computed once and
    weighted by the number of such rows.

    ``row_range=(lo, hi)``: only rows lo..hi-1 of X (``rows`` all lie there): the BCE sum of
    those rows, still divided by num_rows * in, and their codes (hi - lo, d). The terms of
    disjoint ranges add up to the whole (distributed training splits X this way).
    ``kernels``: the BCE math (``BCE_KERNELS`` or compiled versions).
    """
    first, second = ae.encoder[0], ae.encoder[2]
    m, num_inputs = rows.numel(), first.in_features
    lo, hi = row_range or (0, num_rows)
    code0 = second(torch.relu(first.bias)).unsqueeze(0)  # (1, d)
    # m may be 0: W1 then still gets its (zero) gradient, as in the dense computation,
    # so Adam's moments and weight decay update it exactly as the reference's do
    h = _BinaryRowsTimesWeightT.apply(first.weight, owner, cols, m) + first.bias
    codes = torch.cat([code0, second(torch.relu(h))])  # (1 + m, d)
    logits = ae.decoder[:-1](codes)  # (1 + m, in); decoder[-1] is the sigmoid, fused below
    target = torch.zeros_like(logits)
    target[owner + 1, cols] = 1.0
    row_weight = torch.ones(m + 1, dtype=logits.dtype, device=logits.device)
    row_weight[0] = (hi - lo) - m
    bce = sigmoid_bce_sum(logits, target, row_weight, kernels) / (num_rows * num_inputs)
    z = code0.expand(hi - lo, -1).index_put((rows - lo if lo else rows,), codes[1:])
    return bce, z  # z: (hi - lo, d)


# ---------------------------------------------------------------------------- sampling

def gumbel_topk(log_weights: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n distinct column indices per row, drawn without replacement from the categorical
    distribution proportional to exp(log_weights) (Gumbel-top-k: the same distribution as
    sequential draws, as torch.multinomial(replacement=False) makes). Zero weights are -inf.

    log_weights: (..., I) -> (..., n) long.
    """
    keys = torch.rand(log_weights.shape, generator=generator, device=log_weights.device,
                      dtype=log_weights.dtype)
    # keys = log_weights + gumbel, gumbel = -log(-log u), in place: the same floats as the
    # out-of-place expression (tests/test_sampling.py) without three (P, I) allocations
    keys.clamp_min_(torch.finfo(keys.dtype).tiny).log_().neg_().log_().neg_().add_(log_weights)
    return torch.topk(keys, n, dim=-1, sorted=False).indices


def multinomial_without_replacement(weights: Tensor, n: int,
                                    generator: torch.Generator | None = None) -> Tensor:
    """The reference's sampler: torch.multinomial(weights, n, replacement=False)."""
    return torch.multinomial(weights, n, replacement=False, generator=generator)



# ---------------------------------------------------------------- the BPR baselines' parts

def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """L_bpr = mean_b -log sigmoid(s(u_b, i_b) - s(u_b, j_b)) = mean softplus(s_j - s_i).

    pos_scores, neg_scores: (B,), one sampled negative j per positive (u, i).
    """
    return F.softplus(neg_scores - pos_scores).mean()


def pruned_mean(row_losses: Tensor, drop: float, keep: str = "high_loss",
                row_weight: Tensor | None = None) -> Tensor:
    """LLMRec's noise pruning of a batch's rows: keep the N' = floor((1 - drop) N) rows with
    the highest loss (``keep="high_loss"``, what LLMRec's code does) or the lowest
    (``"low_loss"``, what its paper describes: drop the unreliable hard rows), and return
    sum_kept w_r l_r / N'. drop = 0 keeps every row: the plain (weighted) mean; at least
    one row is always kept (LLMRec's code would average an empty set into NaN).

    row_losses: (N,) the per-row losses l_r; row_weight: (N,) or None (all 1). The ranking
    uses l_r alone and carries no gradient.
    """
    n = row_losses.numel()
    kept = max(1, int((1.0 - drop) * n))
    weighted = row_losses if row_weight is None else row_weight * row_losses
    if kept >= n:
        return weighted.sum() / n
    order = torch.topk(row_losses.detach(), kept, largest=keep == "high_loss").indices
    return weighted[order].sum() / kept


def batch_l2(node_embeddings: Tensor, batch_size: int, weight: float) -> Tensor:
    """weight * ||E0[nodes]||^2 / batch_size over the batch's DISTINCT nodes (users, positive
    and negative items), each counted once however often it occurs in the batch."""
    return weight * node_embeddings.pow(2).sum() / batch_size


def categorical_sample(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One column index per row, drawn with probability weights[b, j] / sum_j weights[b, j]
    (the distribution of torch.multinomial(weights, 1), 30x cheaper on CPU): inverse CDF on
    the float64 cumulative sums. Zero-weight columns are never drawn.

    weights: (B, I) non-negative, every row with a positive sum -> (B,) long.
    """
    cdf = weights.to(torch.float64).cumsum(1)  # (B, I)
    u = torch.rand((cdf.size(0), 1), generator=generator, dtype=torch.float64, device=cdf.device)
    return inverse_cdf(cdf, u).squeeze(1)


def inverse_cdf(cdf: Tensor, u: Tensor) -> Tensor:
    """For each row of cdf (B, I) and each uniform in u (B, n): the first j with
    cdf[j] > u * total. x stays in [0, total), so that j has cdf[j] > cdf[j - 1], i.e. w_j > 0."""
    total = cdf[:, -1:]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True)


def categorical_draws(weights: Tensor, rows: Tensor, n: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """n independent draws (with replacement) for each entry of ``rows``, draw j with
    probability weights[row, j] / sum_j weights[row, j] (inverse CDF on float64 cumulative
    sums, as ``categorical_sample``). Zero-weight columns are never drawn.

    weights: (R, I) non-negative, rows with a positive sum; rows: (B,) long -> (B, n) long.
    """
    return draws_from_cdf(weights.to(torch.float64).cumsum(1), rows, n, generator)


def draws_from_cdf(cdf: Tensor, rows: Tensor, n: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """``categorical_draws`` from precomputed float64 cumulative weights (R, I): the same
    draws, for weights that do not change between batches."""
    cdf = cdf[rows]  # (B, I)
    u = torch.rand((rows.numel(), n), generator=generator, dtype=torch.float64,
                   device=cdf.device)
    return inverse_cdf(cdf, u)
