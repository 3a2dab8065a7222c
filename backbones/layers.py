"""Layers that hold K independent runs of a model as one module (horizontal fusion).

A packed model computes K runs at once: every parameter and buffer has the runs as the
contiguous chunks of its first dimension (run k owns ``tensor.chunk(K, 0)[k]``), so a packed
state dict is the concatenation of K ordinary ones (:func:`pack_states`) and run k is recovered
by slicing (:func:`unpack_state`). K = 1 is the ordinary model: one implementation serves both.

Sequences are kept time-major in the layout (G, C, T, B): G groups (runs x directions), C
channels, T time, B batch. A shift in time is then a contiguous slice of the flattened (T B)
axis, so a dilated temporal convolution is one batched GEMM per kernel tap over all groups,
accumulated in place into the shifted output (:class:`TemporalConv`, no padding copies);
BatchNorm is one call over G x C channels (:class:`RunBatchNorm`), a head one batched matmul
(:class:`RunLinear`).

Randomness is per run and counter-based: dropout masks are a hash of (run seed, the run's step
counter, the layer, the element), so a run draws the same masks whether it trains alone or in
a pack of any size, on any device. BatchNorm running statistics and the step counter advance
only for runs marked active (a run that has finished or has no batch in this step). The layers
read that per-run state through :class:`RunInfo`; the training stage owns it
(:mod:`transfer.train.runs`).

Why one file (~540 lines): the packed layers and their hand-written autograd functions share the
(G, C, T, B) layout, the GEMM row padding and the per-run state protocol; each layer is one
class plus its Function.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from backbones import kernels

_M32 = 0xFFFFFFFF


def hash_uniform(seed: Tensor, stream: int, counter: Tensor | int, n: int) -> Tensor:
    """Uniform numbers in [0, 1), a pure function of (seed, stream, counter, index).

    Args:
        seed: (K,) int64, one per run.
        stream: a constant that separates uses (a layer, the batch sampler, ...).
        counter: (K,) int64 or an int, e.g. a step or an epoch.
        n: how many numbers per run.

    Shape: (K, n) float32. Integer mixing (a murmur3-style finaliser) in int64 tensors with
    every product below 2^63, so it is exact and identical on CPU and GPU.
    """
    seed = seed.to(torch.int64)
    counter = torch.as_tensor(counter, dtype=torch.int64, device=seed.device)
    base = (((seed & _M32) * 0x61C88647) & _M32) ^ (((counter & _M32) * 0x2545F491) & _M32)
    base = (base + (stream & _M32) * 0x1B873593) & _M32  # (K,)
    h = (base.unsqueeze(-1) + torch.arange(n, device=seed.device) * 0x27D4EB2F) & _M32  # (K, n)
    for mult in (0x7FEB352D, 0x4B1D2A63):
        h = h ^ (h >> 16)
        h = (h * mult) & _M32
    h = h ^ (h >> 15)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


class RunInfo(Protocol):
    """What the packed layers read about their K runs at every step, from whoever trains them.

    Training state lives in the training stage: :class:`transfer.train.runs.RunState` creates,
    installs and advances it (this stage is below it and cannot import it); the layers only
    read it. Tensors live on the model's device and change in place, so that a captured CUDA
    graph sees the new values.

    Attributes:
        seed: (K,) int64, per-run seeds of the dropout masks.
        counter: (K,) int64, per-run step counters (a mask is a hash of seed, counter, layer).
        active: (K,) bool, the runs this step trains (the others keep their BatchNorm
            statistics).
    """

    seed: Tensor
    counter: Tensor
    active: Tensor


class RunModule(nn.Module):
    """Base of the packed layers: knows K and, once a trainer installs them, the run state and
    the layer's stream (a constant that separates its random draws from other layers')."""

    runs: int
    run_state: RunInfo | None = None
    stream: int = 0


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm`` that never runs a matrix-vector product with a batch of one.

    BLAS takes another path (gemv) for a single matrix with one output row or column, which
    rounds differently; duplicating the one matrix keeps a run's bits the same alone and in a
    pack.
    """
    if a.shape[0] == 1 and (a.shape[1] == 1 or b.shape[2] == 1):
        return torch.bmm(a.expand(2, -1, -1), b.expand(2, -1, -1))[:1]
    return torch.bmm(a, b)


# --- weight-gradient GEMM row padding (CPU) ------------------------------------------------------
def gemm_rows(channels: int, device: torch.device) -> int:
    """Rows to give the gradient operand of a CPU weight-gradient GEMM: ``channels`` rounded up
    to a multiple of 8 (for more than 8 channels; on other devices, ``channels``).

    The weight gradient of a temporal convolution is a (C_in x T B) by (T B x C_out) product
    with a long inner dimension. MKL's fp32 kernel (2-core AMD EPYC, one thread, T B = 20,032)
    runs it 1.40x faster with C_out = 40 zero-padded rows than with C_out = 39 (TIM-Net's
    width), and 0.92x to 2.7x (median about 1.2x) for the other widths from 9 to 71 that are
    not multiples of 8. The extra rows only produce extra output columns, which are dropped,
    so the gradient's values do not change (whatever the rows hold).
    """
    if device.type != "cpu" or channels <= 8 or channels % 8 == 0:
        return channels
    return -(-channels // 8) * 8


def padded_empty(groups: int, channels: int, n: int, like: Tensor) -> Tensor:
    """An uninitialised (G, C, n) tensor stored as the first C rows of a (G, C', n) buffer,
    C' = :func:`gemm_rows` (a plain tensor when C' = C); the other rows are zeroed (never NaN or
    denormal in a GEMM). :func:`as_padded` recovers the buffer without a copy."""
    rows = gemm_rows(channels, like.device)
    buf = torch.empty(groups, rows, n, dtype=like.dtype, device=like.device)
    buf[:, channels:].zero_()
    return buf[:, :channels]


def as_padded(t: Tensor) -> Tensor:
    """(G, C, n) -> (G, C', n), C' = :func:`gemm_rows`, t in the first C rows, when t is such a
    view (of a :func:`padded_empty` buffer or of the BatchNorm backward's output): the buffer as
    it is; anything else is returned unchanged (a copy next to zero rows costs more than the
    padding saves)."""
    g, c, n = t.shape
    rows = gemm_rows(c, t.device)
    if rows == c:
        return t
    base = t._base
    if (base is not None and base.shape == (g, rows, n) and base.data_ptr() == t.data_ptr()
            and t.stride() == base.stride()):
        return base
    return t


class _AddBias(torch.autograd.Function):
    """x + bias per (group, channel). The bias gradient is a row sum of the contiguous
    gradient, so every run's value has the same bits in a pack of any size (autograd's
    broadcast reduction picks its loop order from the whole tensor's shape)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, channel_dim: int = 1) -> Tensor:  # noqa: ANN001
        ctx.channel_dim = channel_dim
        shape = [1] * x.dim()
        shape[0], shape[channel_dim] = bias.shape
        return x + bias.view(shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        rows = grad.movedim(ctx.channel_dim, 1).contiguous()
        g, c = rows.shape[:2]
        return grad, rows.view(g, c, -1).sum(-1), None


class _DenseGrad(torch.autograd.Function):
    """Identity whose gradient goes back contiguous. The CPU BatchNorm backward reduces a strided
    gradient (one that comes back through a transpose, as ECAPA's pooled statistics into its
    embedding layer) in an order that depends on the whole tensor's shape, so a run's bits would
    depend on the pack size; a contiguous gradient is left as it is (no copy)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return grad.contiguous()


class _TemporalConvFn(torch.autograd.Function):
    """The taps of a grouped temporal convolution as batched GEMMs on shifted slices.

    Inputs: x (G, C_in, T B) time-major, weight (G, k, C_out, C_in), bias (G, C_out) or None,
    ``shifts[j]``: tap j's delay in steps (one tap has delay 0), ``batch``: B.
    Output: (G, C_out, T B). The backward pass is written out the same way (no padded copies);
    the bias gradient is a row sum, whose bits do not depend on G. Under autocast the GEMMs run
    in the autocast dtype, forward and backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, shifts: list[int],  # noqa: ANN001
                batch: int) -> Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        n = x.shape[-1]
        zero = shifts.index(0)
        with torch.autocast(device, enabled=False):
            if bias is None:
                out = bmm(weight[:, zero], x)
            else:
                out = torch.baddbmm(bias.unsqueeze(-1), weight[:, zero], x)
            for j, s in enumerate(shifts):
                sb = s * batch
                if j == zero or abs(sb) >= n:
                    continue
                if sb > 0:
                    out[..., sb:].baddbmm_(weight[:, j], x[..., :n - sb])
                else:
                    out[..., :n + sb].baddbmm_(weight[:, j], x[..., -sb:])
        ctx.save_for_backward(x, weight)
        ctx.shifts, ctx.batch, ctx.has_bias = shifts, batch, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        g = grad.to(x.dtype)
        if g.stride(-1) != 1 or g.stride(1) != g.shape[-1]:  # GEMM operands need unit-stride rows
            g = g.contiguous()
        n, zero, c_out = x.shape[-1], ctx.shifts.index(0), g.shape[1]
        # zero rows for the fp32 weight-gradient GEMMs (see gemm_rows)
        gp = as_padded(g) if g.dtype == torch.float32 else g
        need_x = ctx.needs_input_grad[0]  # not for the first layer on the input features
        gx = bmm(weight[:, zero].transpose(1, 2), g) if need_x else None

        def weight_grad(gs: Tensor, xs: Tensor) -> Tensor:  # (G, C_out, C_in)
            return bmm(xs, gs.transpose(1, 2))[:, :, :c_out].transpose(1, 2)

        gw = []
        for j, s in enumerate(ctx.shifts):
            sb = s * ctx.batch
            if j == zero:
                gw.append(weight_grad(gp, x))
            elif abs(sb) >= n:
                gw.append(torch.zeros_like(weight[:, j]))
            elif sb > 0:
                if need_x:
                    gx[..., :n - sb].baddbmm_(weight[:, j].transpose(1, 2), g[..., sb:])
                gw.append(weight_grad(gp[..., sb:], x[..., :n - sb]))
            else:
                if need_x:
                    gx[..., -sb:].baddbmm_(weight[:, j].transpose(1, 2), g[..., :n + sb])
                gw.append(weight_grad(gp[..., :n + sb], x[..., -sb:]))
        gb = g.sum(-1) if ctx.has_bias else None
        return gx, torch.stack(gw, 1), gb, None, None


class TemporalConv(RunModule):
    """G grouped 1-D convolutions over time, one batched GEMM per kernel tap.

    ``causal``: output t sees inputs t, t - d, ..., t - (k - 1) d (left zero padding, as the
    dilated causal convolutions of TIM-Net); otherwise "same" padding (k odd).

    Args:
        groups: G (runs x groups per run).
        in_channels, out_channels: per group.
        kernel_size, dilation, causal: as above.

    Shape: (G, C_in, T, B) -> (G, C_out, T, B). Weight (G, k, C_out, C_in), bias (G, C_out).
    """

    def __init__(self, groups: int, in_channels: int, out_channels: int, kernel_size: int = 1,
                 dilation: int = 1, causal: bool = True, bias: bool = True) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError("a non-causal TemporalConv needs an odd kernel size")
        self.groups, self.kernel_size, self.dilation = groups, kernel_size, dilation
        k, cin, cout = kernel_size, in_channels, out_channels
        # tap j sees the input delayed by shifts[j] steps (negative: ahead)
        if causal:
            self.shifts = [(k - 1 - j) * dilation for j in range(k)]
        else:
            self.shifts = [((k - 1) // 2 - j) * dilation for j in range(k)]
        self.weight = nn.Parameter(torch.empty(groups, k, cout, cin))
        self.bias = nn.Parameter(torch.empty(groups, cout)) if bias else None
        bound = 1.0 / (cin * k) ** 0.5  # PyTorch's Conv1d initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, with_bias: bool = True) -> Tensor:
        g, cin, t, b = x.shape
        out = _TemporalConvFn.apply(x.reshape(g, cin, t * b), self.weight,
                                    self.bias if with_bias else None, self.shifts, b)
        return out.view(g, -1, t, b)


class _BatchNormReluFn(torch.autograd.Function):
    """``relu(batch_norm(x)) * mask`` in training mode, for fp32 (G, C, T, B) input, in fewer and
    cheaper passes than the three separate ops.

    PyTorch's CPU BatchNorm accumulates its statistics in float64 (about 4x the time of a float32
    pass over the same data), and the ReLU and the dropout product each add a read and a write of
    the whole activation. Here the statistics are float32 row reductions, and normalisation,
    affine, dropout and ReLU one pass: the dropout mask (one value per group, channel and sample,
    non-negative) is folded into the per-(channel, sample) scale and shift, since
    ``relu(z) * m = relu(z * m)`` for ``m >= 0``. Where :func:`kernels.available` (a CPU with a
    C++ compiler), forward and backward are each one compiled kernel
    (:func:`kernels.bn_relu_forward`, :func:`kernels.bn_relu_backward`); elsewhere the same maths
    runs as a few eager passes (a mean, the norm of the centred rows, one ``addcmul`` and one
    in-place clamp).

    The preceding convolution's bias (``conv_bias``, (G, C) or None) is taken here instead of
    being broadcast into the convolution's output: the normalisation subtracts it again, so it
    only enters the batch mean reported for the running statistics, and its gradient is the row
    sum of the input gradient, as the convolution would compute it.

    Inputs: x (G, C, T, B) contiguous; weight, bias (G C,); conv_bias; keep (G, C, 1, B) of 0/1
    or None; ``scale`` = 1 / (1 - p); ``eps``. Returns y (G, C, T, B), and the batch mean and
    biased variance per channel (G C,) for the running statistics (not differentiable).
    The input gradient comes back as the first C rows of a buffer with zero rows appended
    (:func:`padded_empty`), which the convolution's weight gradient reads as it is.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, conv_bias: Tensor | None,  # noqa: ANN001
                keep: Tensor | None, scale: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        scale = scale if keep is not None else 1.0
        ctx.compiled = kernels.available(x.device)
        if ctx.compiled:  # saves the input itself, the mean and the mask (not the output)
            y, mean, var, rstd = kernels.compiled(kernels.bn_relu_forward)(x, weight, bias, keep,
                                                                           scale, eps)
            ctx.save_for_backward(x, keep, weight, rstd, mean, bias)
        else:  # saves the centred input
            g, c, t, b = x.shape
            n = t * b
            rows = x.view(g * c, n)
            mean = rows.mean(1)
            d = rows - mean.unsqueeze(1)
            var = torch.linalg.vector_norm(d, dim=1).square() / n
            rstd = (var + eps).rsqrt()
            a = (weight * rstd).view(g, c, 1, 1)
            shift = bias.view(g, c, 1, 1)
            if keep is not None:
                m = keep * scale
                a, shift = a * m, shift * m
            y = torch.addcmul(shift, d.view(g, c, t, b), a).clamp_min_(0)
            ctx.save_for_backward(d.view(x.shape), y, weight, rstd)
        if conv_bias is not None:  # the mean of the convolution's output with its bias
            mean = mean + conv_bias.reshape(-1)
        ctx.conv_bias, ctx.scale = conv_bias is not None, scale
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, *_: Tensor):  # noqa: ANN001, ANN205
        x, weight, rstd = (ctx.saved_tensors[i] for i in (0, 2, 3))
        g, c, t, b = x.shape
        n = t * b
        if ctx.compiled:
            keep, mean, bias = (ctx.saved_tensors[i] for i in (1, 4, 5))
            bwd = kernels.compiled(kernels.bn_relu_backward)
            # contiguous: a kernel is compiled per stride pattern too, and one compiled for
            # another layout may sum in another order (the bits would depend on the pack size)
            gx, gweight, gbias, gconv = bwd(grad.contiguous(), x, mean, weight, bias, rstd, keep,
                                            ctx.scale, gemm_rows(c, x.device))
            gx = gx[:, :c]
        else:  # x is the centred input here, and the output is saved
            y = ctx.saved_tensors[1]
            d = x.view(g, c, n)
            gw = torch.ops.aten.threshold_backward(grad.contiguous(), y, 0).view(g, c, n)
            s1 = gw.sum(2).view(-1)  # sum of the gradient w.r.t. the affine output (/ scale)
            s2 = torch.linalg.vecdot(gw, d).view(-1)  # and of it times the centred input
            alpha = weight * rstd * ctx.scale
            gx = padded_empty(g, c, n, d)
            torch.addcmul((-alpha * s1 / n).view(g, c, 1), gw, alpha.view(g, c, 1), out=gx)
            gx.addcmul_(d, (-alpha * rstd * rstd * s2 / n).view(g, c, 1))
            gweight, gbias = s2 * rstd * ctx.scale, s1 * ctx.scale
            gconv = gx.sum(2)
        return (gx.view(g, c, t, b), gweight, gbias, gconv if ctx.conv_bias else None,
                None, None, None)


class _GateFn(torch.autograd.Function):
    """``x * sigmoid(h)`` and its mean over time, as one compiled kernel each way
    (:func:`kernels.gate_forward`, :func:`kernels.gate_backward`)."""

    @staticmethod
    def forward(ctx, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        out, mean, s = kernels.compiled(kernels.gate_forward)(x, h)
        ctx.save_for_backward(x, s)
        ctx.set_materialize_grads(False)  # the last block's output is only pooled
        return out, mean

    @staticmethod
    def backward(ctx, grad: Tensor | None, grad_mean: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, Tensor | None]:
        x, s = ctx.saved_tensors
        if grad_mean is None:
            if grad is None:
                return None, None
            grad_mean = grad.new_zeros(x.shape[0], x.shape[1], x.shape[3])
        if grad is None:
            return kernels.compiled(kernels.gate_backward_mean)(grad_mean.contiguous(), x, s)
        return kernels.compiled(kernels.gate_backward)(grad.contiguous(), grad_mean.contiguous(),
                                                       x, s)


def gate_mean(x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``x * sigmoid(h)`` for (G, C, T, B), and its mean over time (G, C, B): one fused pass
    each way when training in fp32 where :func:`kernels.available`, else the plain ops."""
    if (torch.is_grad_enabled() and (x.requires_grad or h.requires_grad)
            and x.dtype == h.dtype == torch.float32 and x.shape == h.shape
            and not torch.is_autocast_enabled(x.device.type) and kernels.available(x.device)):
        return _GateFn.apply(x, h)
    out = x * torch.sigmoid(h)
    return out, out.mean(2)


class RunBatchNorm(RunModule):
    """BatchNorm over G x C channels of (G, C, T, B) or (G, C, B); statistics per channel over
    time and batch. Running statistics of inactive runs stay as they are.

    Shape: (G, C, *) -> same.
    """

    def __init__(self, runs: int, channels: int, eps: float = 1e-5, momentum: float = 0.1
                 ) -> None:
        super().__init__()
        self.runs, self.eps, self.momentum = runs, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))  # channels = G x C (all runs)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(1, self.weight.shape[0], -1)  # (1, G*C, T*B)
        if not self.training:
            out = nn.functional.batch_norm(flat, self.running_mean, self.running_var,
                                           self.weight, self.bias, False, 0.0, self.eps)
            return out.view(shape)
        out, mean, rstd = torch.native_batch_norm(flat, self.weight, self.bias, None, None, True,
                                                  self.momentum, self.eps)
        with torch.no_grad():
            self._update_running(mean.float(), rstd.float().pow(-2) - self.eps, flat.shape[-1])
        return _DenseGrad.apply(out).view(shape)

    def conv_relu_dropout(self, conv: TemporalConv, x: Tensor, dropout: RunDropout) -> Tensor:
        """``dropout(relu(self(conv(x))))`` for (G, C, T, B); in training mode in fp32 the
        BatchNorm, ReLU, dropout and the convolution's bias are one function
        (:class:`_BatchNormReluFn`): the same maths in fewer passes."""
        if not (self.training and torch.is_grad_enabled() and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and x.dim() == 4
                and not torch.is_autocast_enabled(x.device.type)):
            return dropout(torch.relu(self(conv(x))))
        h = conv(x, with_bias=False)
        keep = dropout.keep_mask(h) if dropout.training and dropout.p > 0 else None
        y, mean, var = _BatchNormReluFn.apply(h, self.weight, self.bias, conv.bias, keep,
                                              1.0 / (1.0 - dropout.p), self.eps)
        with torch.no_grad():
            self._update_running(mean, var, x.shape[2] * x.shape[3])
        return y

    def _update_running(self, mean: Tensor, var: Tensor, n: int) -> None:
        """Running statistics from the batch mean and biased variance, for active runs only."""
        var = var * (n / max(n - 1, 1))  # unbiased
        m = self.momentum
        new_mean = self.running_mean * (1 - m) + mean * m
        new_var = self.running_var * (1 - m) + var * m
        if self.run_state is not None:
            keep = self.run_state.active.repeat_interleave(mean.shape[0] // self.runs)
            new_mean = torch.where(keep, new_mean, self.running_mean)
            new_var = torch.where(keep, new_var, self.running_var)
        self.running_mean.copy_(new_mean)
        self.running_var.copy_(new_var)


class RunDropout(RunModule):
    """Dropout with per-run counter-based masks (see the module docstring).

    ``channels = True``: whole channels of a sequence are dropped (spatial dropout, the Keras
    ``SpatialDropout1D`` of TIM-Net): input (G, C, T, B), one draw per (group, channel, sample).
    ``channels = False``: elementwise on (K, B, D).
    Without a run state (a model used outside the engine) masks come from torch's generator.
    """

    def __init__(self, runs: int, p: float, channels: bool = True) -> None:
        super().__init__()
        self.runs, self.p, self.channels = runs, p, channels

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = self.keep_mask(x)
        return x * (keep * (1.0 / (1.0 - self.p)))  # scale the small mask once

    def keep_mask(self, x: Tensor) -> Tensor:
        """The 0/1 mask (in x's dtype) that this step keeps: (G, C, 1, B) for ``channels``,
        else x's shape."""
        if self.channels:  # (G, C, T, B): one draw per (group, channel, sample)
            mask_shape = torch.Size((x.shape[0], x.shape[1], 1, x.shape[3]))
        else:
            mask_shape = x.shape
        if self.run_state is None:
            keep = torch.rand(mask_shape, device=x.device) >= self.p
        else:
            per_run = mask_shape.numel() // self.runs
            u = hash_uniform(self.run_state.seed, self.stream, self.run_state.counter, per_run)
            keep = (u >= self.p).view(mask_shape)
        return keep.to(x.dtype)


class RunLinear(RunModule):
    """K independent linear layers as one batched matmul.

    Shape: (K, B, in) -> (K, B, out). Weight (K, in, out), bias (K, out).
    """

    def __init__(self, runs: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.runs = runs
        bound = 1.0 / in_features ** 0.5  # PyTorch's Linear initialisation
        self.weight = nn.Parameter(torch.empty(runs, in_features, out_features).uniform_(-bound,
                                                                                          bound))
        self.bias = nn.Parameter(torch.empty(runs, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return _AddBias.apply(bmm(x, self.weight), self.bias, 2)


# --- packing and unpacking states ---------------------------------------------------------------
def pack_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """K ordinary (K = 1) state dicts -> the state dict of the packed module."""
    return {k: torch.cat([s[k] for s in states], 0) for k in states[0]}


def unpack_state(state: dict[str, Tensor], runs: int, k: int) -> dict[str, Tensor]:
    """Run ``k``'s ordinary state dict out of a packed one (copies)."""
    return {name: t.chunk(runs, 0)[k].clone() for name, t in state.items()}


def repeat_state(state: dict[str, Tensor], runs: int) -> dict[str, Tensor]:
    """An ordinary state dict copied into every run of a packed one."""
    return {name: torch.cat([t] * runs, 0) for name, t in state.items()}
