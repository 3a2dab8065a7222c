"""Fused elementwise kernels of the training step, compiled once per process on a CPU.

Eager PyTorch runs every elementwise op as its own pass over memory, and in a TIM-Net training
step on a CPU those passes over activations of tens of MiB are a third of the time: BatchNorm
statistics, normalisation, ReLU and dropout, their gradients, the sigmoid gate. Each function
here is the plain tensor maths of one such group; :func:`compiled` hands back its
``torch.compile`` (inductor) version, which runs the group as one or two loops. The layers use
them where :func:`available` (a CPU with a C++ compiler, not turned off with
``SER_TRANSFER_COMPILE=0`` or :func:`set_enabled`) and run eager code elsewhere (a GPU, where a
captured CUDA graph is the answer to many small kernels). A compilation that fails warns once
and turns the kernels off for the rest of the process. (The layers keep their own eager
version of the same maths: these functions, written for the compiler, run slower than that
when they are not compiled.)

Compiling costs a few seconds per function and shape, once per process (less with inductor's
on-disk cache).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

ENV = "SER_TRANSFER_COMPILE"  # "0" turns the compiled kernels off

_enabled: bool | None = None
_compiled: dict[Callable, Callable] = {}
_failed: set[Callable] = set()  # compilations that raised: kernels off from then on


def set_enabled(on: bool | None) -> None:
    """Turn the compiled kernels on or off for this process (None: the default, on when a C++
    compiler is found and ``SER_TRANSFER_COMPILE`` is not "0")."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    """Whether the layers use the compiled kernels on a CPU: :func:`set_enabled`, else
    ``SER_TRANSFER_COMPILE`` (default on) and a C++ compiler on the PATH."""
    if _enabled is not None:
        return _enabled
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return has_compiler()


@functools.cache
def has_compiler() -> bool:
    """Whether inductor finds a C++ compiler for CPU kernels."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@functools.cache
def works() -> bool:
    """Whether inductor builds and runs a CPU kernel here (a probe, compiled once; False where
    the compiler, the Python headers or a writable cache directory are missing)."""
    if not has_compiler():
        return False
    try:
        x = torch.arange(4.0)
        return bool(torch.equal(torch.compile(_probe, dynamic=False)(x), x * 2 + 1))
    except Exception:  # noqa: BLE001 - whatever stops inductor here
        return False


def _probe(x: Tensor) -> Tensor:
    return x * 2 + 1


def available(device: torch.device) -> bool:
    """Whether the compiled kernels run for tensors on ``device``: a CPU, :func:`enabled`, and no
    compilation has failed in this process."""
    return device.type == "cpu" and not _failed and enabled()


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled by inductor (a failure warns, and ``fn`` itself runs from then on).

    Static shapes: one compilation per shape (a few seconds, less from inductor's on-disk
    cache), and kernels with every size known run 2-3x faster than shape-generic ones here. A
    training process sees few shapes (one per pack size and batch); past dynamo's recompile
    limit (8 per function) further shapes run ``fn`` eagerly, with dynamo's warning.
    """
    out = _compiled.get(fn)
    if out is None:
        out = _compiled[fn] = _guarded(fn, torch.compile(fn, dynamic=False, options=_options()))
    return out


# Inductor stores a pointwise result that has several users and more than 4 inputs, and
# reads it back, rather than recompute it in each loop that uses it. For these kernels the
# stored tensors are whole activations (the masked gradient of the BatchNorm backward): a
# write and two reads of tens of MiB where recomputing costs a few multiplications. 2-core
# AMD EPYC, 15 packed runs: BatchNorm backward 25.6 -> 13.9 ms, with the padded output below.
def _options() -> dict[str, Any]:
    import torch._inductor.config as inductor_config  # here: importing inductor takes ~1 s

    return ({"realize_reads_threshold": 64}
            if hasattr(inductor_config, "realize_reads_threshold") else {})


def _guarded(fn: Callable, compiled_fn: Callable) -> Callable:
    def call(*args: Any) -> Any:
        if fn in _failed:
            return fn(*args)
        try:
            return compiled_fn(*args)
        except Exception as err:  # noqa: BLE001 - no compiler, an inductor bug: run eager
            first = not _failed
            _failed.add(fn)
            if first:  # once per process
                warnings.warn(f"compiling {fn.__name__} failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); running the "
                              f"eager kernels (set {ENV}=0 to skip compiling)", RuntimeWarning,
                              stacklevel=2)
            return fn(*args)
    return call


# --- BatchNorm + ReLU + channel dropout (training mode) ------------------------------------------
def bn_relu_forward(h: Tensor, weight: Tensor, bias: Tensor, keep: Tensor | None, scale: float,
                    eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``relu(batch_norm(h)) * keep * scale`` for (G, C, T, B) ``h``; ``keep`` (G, C, 1, B) of
    0/1 or None. Returns y, the batch mean and biased variance per channel (G C,), and rstd.

    The mask is folded into the per-(channel, sample) scale and shift: relu(z) m = relu(z m)
    for m >= 0.
    """
    g, c, t, b = h.shape
    var, mean = torch.var_mean(h.reshape(g * c, t * b), dim=1, correction=0)
    rstd = torch.rsqrt(var + eps)
    a, shift = _scale_shift(weight, bias, rstd, keep, scale, g, c)
    y = torch.relu((h - mean.view(g, c, 1, 1)) * a + shift)
    return y, mean, var, rstd


def _scale_shift(weight: Tensor, bias: Tensor, rstd: Tensor, keep: Tensor | None, scale: float,
                 g: int, c: int) -> tuple[Tensor, Tensor]:
    """The per-channel (or, with a mask, per-(channel, sample)) factor and offset of the
    normalised input; the same ops forward and backward, so that the backward recomputes the
    forward's ReLU threshold (the same expression in both kernels; tested against the eager
    path, which reads the saved output)."""
    a = (weight * rstd).view(g, c, 1, 1)
    shift = bias.view(g, c, 1, 1)
    if keep is not None:
        m = keep * scale
        a, shift = a * m, shift * m
    return a, shift


def bn_relu_backward(grad: Tensor, h: Tensor, mean: Tensor, weight: Tensor, bias: Tensor,
                     rstd: Tensor, keep: Tensor | None, scale: float, rows: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`bn_relu_forward`, from its input ``h`` (where the output is positive
    is recomputed from ``h``: one read of the activation less than reading the output).

    Returns the input's gradient as a (G, ``rows``, T B) buffer whose first C rows hold it and
    whose other rows are zero (the layout of ``layers.padded_empty``, which the convolution's
    weight gradient reads as it is), the weight's, the bias's, and the row sums of the input's
    (the preceding convolution's bias gradient: zero but for rounding, since BatchNorm removes a
    bias). Two passes over the activation: the row sums, then the input gradient, written
    straight into the buffer.

    Where the output is positive the mask equals ``scale``, so ReLU and dropout are one
    threshold (``scale`` = 1 without dropout).
    """
    g, c, t, b = h.shape
    n = t * b
    a, shift = _scale_shift(weight, bias, rstd, keep, scale, g, c)
    d = h - mean.view(g, c, 1, 1)
    gw = torch.where(d * a + shift > 0, grad, 0.0)
    s1 = gw.sum((2, 3)).view(-1)
    s2 = (gw * d).sum((2, 3)).view(-1)
    # zero but for rounding. With a mask, the mask's broadcast in the condition puts this sum in
    # the same loop as s1 and s2 (a plain sum of d gets a loop, a pass over h, of its own)
    s0 = (d if keep is None else torch.where(keep >= 0, d, 0.0)).sum((2, 3)).view(-1)
    alpha = weight * rstd * scale
    c1 = alpha * s1 / n
    c2 = alpha * rstd * rstd * s2 / n
    gx = alpha.view(g, c, 1, 1) * gw - c1.view(g, c, 1, 1) - c2.view(g, c, 1, 1) * d
    gx = gx.view(g, c, n)
    if rows > c:
        gx = torch.cat([gx, gx.new_zeros(g, rows - c, n)], 1)
    # the row sums of the input gradient from the row sums above (no second pass over it)
    gconv = (alpha * s1 - n * c1 - c2 * s0).view(g, c)
    return gx, s2 * rstd * scale, s1 * scale, gconv


# --- the sigmoid gate of a Temporal Aware Block ---------------------------------------------------
def gate_forward(x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x * sigmoid(h)`` for (G, C, T, B), its mean over time (G, C, B) (the block's pooled
    vector) in the same kernel (a second loop reads the output back), and the sigmoid (kept
    for the backward pass: recomputing its exp there costs more than the extra write)."""
    s = torch.sigmoid(h)
    out = x * s
    return out, out.mean(2), s


def gate_backward(grad: Tensor, grad_mean: Tensor, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`gate_forward` w.r.t. x and h, from the output's and the time mean's
    gradients (the mean's gradient spread over time in the same pass) and s = sigmoid(h)."""
    return _gate_input_grads(grad + grad_mean.unsqueeze(2) / x.shape[2], x, s)


def gate_backward_mean(grad_mean: Tensor, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`gate_backward` when only the time mean is used (the last block)."""
    return _gate_input_grads(grad_mean.unsqueeze(2) / x.shape[2], x, s)


def _gate_input_grads(total: Tensor, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """x * s's gradients w.r.t. x and h from the gradient of its output, s = sigmoid(h)."""
    return total * s, total * x * s * (1 - s)
