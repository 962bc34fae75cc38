"""ReFINe++'s loss pieces compiled by ``torch.compile`` (``--compile on``).

The elementwise parts of a step — the sampled softmax over the (P, n) score block, the
sigmoid + BCE of both decoders' (m + 1, in) outputs and its backward, the alignment MSE —
are some hundred small kernels when run eagerly, each a pass over memory; inductor fuses
them into a few loops. The dense and sparse products, the sampling and Adam stay as they
are. The values are those of the eager functions up to float32 rounding (a fused loop sums
in another order and may evaluate exp/log with other instructions): tests/test_oracles.py
checks loss and gradients against the eager step.

On CPU inductor writes C++ and needs a compiler; ``make_kernels`` tries once on a tiny input
and falls back to the eager functions, saying why, when compiling fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from model import BCE_KERNELS, alignment_loss, bce_backward, bce_forward, sampled_softmax_loss


@dataclass(frozen=True)
class LossKernels:
    """The functions a fast-path step calls for its elementwise parts."""

    sampled_softmax: Callable = sampled_softmax_loss
    alignment: Callable = alignment_loss
    bce: tuple = BCE_KERNELS
    compiled: bool = False


EAGER = LossKernels()


def _compile(fn: Callable) -> Callable:
    # dynamic: P, m and n change from batch to batch; one graph serves every shape
    return torch.compile(fn, dynamic=True)


def _probe(kernels: LossKernels) -> None:
    """Run every compiled function once on small inputs (compiles them, raising on failure)."""
    pos = torch.zeros(3, requires_grad=True)
    neg = torch.ones(3, 4, requires_grad=True)
    kernels.sampled_softmax(pos, neg).backward()
    e = torch.ones(5, 2, requires_grad=True)
    kernels.alignment(e, torch.zeros(5, 2), e, torch.zeros(5, 2)).backward()
    value, r = kernels.bce[0](torch.zeros(2, 6), torch.zeros(2, 6), torch.ones(2))
    kernels.bce[1](r, torch.zeros(2, 6), torch.ones(2), torch.ones(()))


def make_kernels(compile_on: bool, device: torch.device, warn=print) -> LossKernels:
    """The eager functions, or (``compile_on``) their compiled versions when compiling works."""
    if not compile_on:
        return EAGER
    kernels = LossKernels(_compile(sampled_softmax_loss), _compile(alignment_loss),
                          (_compile(bce_forward), _compile(bce_backward)), compiled=True)
    if device.type != "cpu":
        return kernels  # compiled at the first step
    try:
        _probe(kernels)
    except Exception as err:  # noqa: BLE001 - inductor raises many kinds; all mean "cannot"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        warn(f"warning: --compile on: torch.compile failed ({reason}); the step runs eagerly")
        return EAGER
    return kernels
