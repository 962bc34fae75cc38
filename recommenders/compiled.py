"""ReFINe++'s loss pieces compiled by ``torch.compile`` (``--compile on``).

The elementwise parts of a step — the sampled softmax over the (P, n) score block, the
sigmoid + BCE of both decoders' (m + 1, in) outputs and its backward, the alignment MSE —
are some hundred small kernels when run eagerly, each a pass over memory; inductor fuses
them into a few loops. The dense and sparse products, the sampling and Adam stay as they
are. The values are those of the eager functions up to float32 rounding (a fused loop sums
in another order and may evaluate exp/log with other instructions): tests/test_compiled.py
checks loss and gradients against the eager step.

Inductor writes C++ (CPU) or Triton (CUDA) code and needs a compiler; ``make_kernels``
tries once on tiny inputs on the run's device and falls back to the eager functions, saying
why, when compiling fails.
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


def _probe(kernels: LossKernels, device: torch.device) -> None:
    """Run every compiled function once on small inputs on ``device`` (compiles them,
    raising on failure)."""
    def t(fill, *shape, grad=False):
        return torch.full(shape, fill, device=device, requires_grad=grad)
    kernels.sampled_softmax(t(0.0, 3, grad=True), t(1.0, 3, 4, grad=True)).backward()
    e = t(1.0, 5, 2, grad=True)
    kernels.alignment(e, t(0.0, 5, 2), e, t(0.0, 5, 2)).backward()
    value, r = kernels.bce[0](t(0.0, 2, 6), t(0.0, 2, 6), t(1.0, 2))
    kernels.bce[1](r, t(0.0, 2, 6), t(1.0, 2), t(1.0))


def make_kernels(compile_on: bool, device: torch.device, warn=print) -> LossKernels:
    """The eager functions, or (``compile_on``) their compiled versions when compiling works."""
    if not compile_on:
        return EAGER
    kernels = LossKernels(_compile(sampled_softmax_loss), _compile(alignment_loss),
                          (_compile(bce_forward), _compile(bce_backward)), compiled=True)
    try:
        _probe(kernels, device)
    except Exception as err:  # noqa: BLE001 - inductor raises many kinds; all mean "cannot"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        warn(f"warning: --compile on: torch.compile failed ({reason}); the step runs eagerly")
        return EAGER
    return kernels
