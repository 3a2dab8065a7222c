"""Packed training: K runs as one model give what K runs one by one give.

The reference points: an unfused TIM-Net built from ``nn.Conv1d`` / ``nn.BatchNorm1d`` per
direction (the maths the fused model must keep), ``torch.optim`` (the update rules the packed
optimiser must keep) and one-by-one training (what a pack must reproduce).

What is exact and what is equal up to float rounding:

- Exact by construction, asserted bit for bit: every run's randomness (batches, dropout masks:
  integer hashes of the run's seed and counters), packing and unpacking states (copies), and a
  captured step replayed against the eager step (the same kernels on the same tensors).
- Equal up to rounding, asserted with tolerances: a run in a pack against the run alone. Every
  GEMM and reduction is per run, but which kernel BLAS or ATen picks, and so the order in which
  it sums, may depend on the whole tensor's shape and on the CPU's vector width: on a 2-core AMD
  EPYC (AVX2) packs are bit-identical to their runs alone, on an Intel Xeon with AVX-512 a
  bias's gradient differed by 2.3e-10. A bias right before a BatchNorm has a gradient that is
  zero in exact arithmetic, so its computed value is rounding noise; Adam turns noise into
  steps of +-lr, so such biases (and the BatchNorm running means that absorb them) are not
  compared after training, and the model's outputs are. The tolerances come from training
  every strategy with noise of 1e-9 added to those gradients (``_noise_tolerances`` below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import pytest
import torch
from conftest import pack_data
from torch import nn

import backbones
from backbones.layers import hash_uniform, pack_states, unpack_state
from backbones.reference import ReferenceTimNet
from backbones.timnet import upgrade_state
from transfer.common.config import TrainConfig
from transfer.train.capture import StepRunner
from transfer.train.engine import fit_runs
from transfer.train.infer import predict_runs
from transfer.train.optim import FlatParams, PackedOptimizer
from transfer.train.packs import build_pack
from transfer.train.strategies import Context, get_strategy, names
from transfer.train.tensors import DomainTensors, Standardizer


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the fused model keeps the maths of two convolutions per block ------------------------------
def test_fused_timnet_equals_two_convolutions_per_block():
    torch.manual_seed(0)
    ref = ReferenceTimNet(13, 8, 4, 2, 3, dropout=0.0, stem="bn")
    nn.init.uniform_(ref.head.weight)
    model = backbones.create("timnet", in_features=13, filters=8, blocks=4, split=2,
                             num_classes=3, stem="bn", dropout=0.0)
    model.load_state_dict(upgrade_state(ref.state_dict(), model.options))
    x = torch.randn(5, 13, 40)
    x_ref, x_model = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    model(x_model).square().sum().backward()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
    # the input gradient, which the first convolution computes only when it is asked for
    torch.testing.assert_close(x_model.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    w = model.general.inputs.conv.weight.grad  # (2, 1, C, C): forward, backward direction
    torch.testing.assert_close(w[0, 0], ref.general.in_fwd.weight.grad[..., 0], rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(w[1, 0], ref.general.in_bwd.weight.grad[..., 0], rtol=1e-4,
                               atol=1e-6)
    bn = model.specific.blocks[1].convs[5].running_mean  # training-mode statistics moved
    ref_bn = torch.cat([ref.specific.fwd[1].convs[5].running_mean,
                        ref.specific.bwd[1].convs[5].running_mean])
    torch.testing.assert_close(bn, ref_bn, rtol=1e-5, atol=1e-7)


def _bn_relu_dropout_unfused(x, weight, bias, conv_bias, keep, p):
    g, c, t, b = x.shape
    h = (x + conv_bias.view(g, c, 1, 1)).reshape(1, g * c, t * b)
    z = nn.functional.batch_norm(h, None, None, weight, bias, True, 0.0, 1e-3).view(x.shape)
    return torch.relu(z) * (keep / (1 - p))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("g, c", [(4, 3), (2, 12)])  # 12 channels: a padded input gradient
def test_fused_batchnorm_relu_dropout_is_the_three_ops(request, compiled, g, c):
    """The fused training-mode BatchNorm + ReLU + channel dropout (with the preceding
    convolution's bias) against the separate ops: outputs, every gradient, the statistics;
    as eager code and as the compiled kernels."""
    from backbones.layers import _BatchNormReluFn

    kernels = request.getfixturevalue("compiled_kernels") if compiled else None
    gen = torch.Generator().manual_seed(0)
    t, b, p = 7, 5, 0.3
    x = (torch.randn(g, c, t, b, generator=gen, dtype=torch.float64) * 3 + 2).requires_grad_()
    weight = torch.randn(g * c, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(g * c, generator=gen, dtype=torch.float64).requires_grad_()
    conv_bias = torch.randn(g, c, generator=gen, dtype=torch.float64).requires_grad_()
    keep = (torch.rand(g, c, 1, b, generator=gen) >= p).double()
    inputs = (x, weight, bias, conv_bias)
    y, mean, var = _BatchNormReluFn.apply(*inputs, keep, 1 / (1 - p), 1e-3)
    ref = _bn_relu_dropout_unfused(*inputs, keep, p)
    torch.testing.assert_close(y, ref)
    rows = (x + conv_bias.view(g, c, 1, 1)).detach().reshape(g * c, -1)
    torch.testing.assert_close(mean, rows.mean(1))
    torch.testing.assert_close(var, rows.var(1, unbiased=False))
    up = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((y * up).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * up).sum(), inputs)
    for name, got, want in zip(("x", "weight", "bias", "conv_bias"), grads, ref_grads,
                               strict=True):
        torch.testing.assert_close(got, want, msg=name)
    assert torch.autograd.gradcheck(
        lambda *a: _BatchNormReluFn.apply(*a, None, 1.0, 1e-3)[0], inputs)
    assert kernels is None or kernels.available(x.device)  # the compiled path really ran


def test_weight_gradient_on_padded_rows_ignores_what_the_extra_rows_hold():
    """The convolution's weight gradient reads its output gradient with rows appended (12 -> 16
    channels, ``gemm_rows``); a gradient that is a view into a wider buffer is read in place,
    and NaN in the extra rows changes nothing."""
    from backbones.layers import TemporalConv, as_padded, gemm_rows

    assert gemm_rows(12, torch.device("cpu")) == 16 and gemm_rows(16, torch.device("cpu")) == 16
    torch.manual_seed(0)
    conv = TemporalConv(4, 12, 12, kernel_size=2, dilation=3)
    x = torch.randn(4, 12, 9, 5)
    up = torch.randn(4, 12, 9 * 5)
    wide = torch.full((4, 16, 9 * 5), float("nan"))
    wide[:, :12] = up
    grads = []
    for g in (up, wide[:, :12]):
        conv.zero_grad()
        conv(x).view(4, 12, -1).backward(g)
        grads.append((conv.weight.grad.clone(), conv.bias.grad.clone()))
    assert as_padded(wide[:, :12]).data_ptr() == wide.data_ptr()  # no copy
    assert as_padded(up) is up  # not a view of a padded buffer: read as it is, not copied
    assert torch.isfinite(grads[1][0]).all()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    for g in range(4):  # against torch's causal dilated convolution, group by group
        w = conv.weight[g].detach().permute(1, 2, 0).clone().requires_grad_()  # (out, in, k)
        xg = nn.functional.pad(x[g].permute(2, 0, 1), (3, 0))  # (B, C, 3 + T)
        out = nn.functional.conv1d(xg, w, conv.bias[g].detach(), dilation=3)  # (B, C, T)
        out.backward(up[g].view(12, 9, 5).permute(2, 0, 1))
        torch.testing.assert_close(grads[0][0][g], w.grad.permute(2, 0, 1), rtol=1e-5,
                                   atol=1e-5)


def test_importing_the_kernels_does_not_import_the_compiler():
    """``backbones.kernels`` imports inductor's config only when it compiles (importing it costs
    every process about a second, GPU and eager runs included)."""
    import subprocess
    import sys

    code = ("import sys, backbones.kernels, backbones.timnet; "
            "print('torch._inductor.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kernels_follow_the_switch_and_a_failed_compilation_falls_back_with_a_warning(
        monkeypatch):
    """``SER_TRANSFER_COMPILE=0`` turns the compiled kernels off; a compilation that raises
    warns once, runs the plain function instead, and turns the kernels off for the process,
    so the layers take their eager path (same output as with the kernels off)."""
    from backbones import kernels

    cpu = torch.device("cpu")
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_failed", set())
    monkeypatch.setattr(kernels, "_enabled", None)
    monkeypatch.setenv("SER_TRANSFER_COMPILE", "0")
    assert not kernels.enabled() and not kernels.available(cpu)
    monkeypatch.setenv("SER_TRANSFER_COMPILE", "1")
    monkeypatch.setattr(kernels, "has_compiler", lambda: True)
    assert kernels.available(cpu) and not kernels.available(torch.device("meta"))

    def broken_compile(fn, **_):
        def run(*args):
            raise RuntimeError("no compiler\nmore")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = backbones.create("timnet", in_features=6, filters=12, blocks=2, split=1,
                             num_classes=2, dropout=0.0)
    x = torch.randn(3, 6, 20)
    with pytest.warns(RuntimeWarning, match="compiling bn_relu_forward failed.*no compiler"):
        out = model(x)
    assert not kernels.available(cpu)  # off for the rest of the process
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again for the backward's kernel
        out.sum().backward()  # the backward of the compiled-path forward falls back too
    kernels.set_enabled(False)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("used", ["both", "mean", "output"])
def test_gate_and_its_time_mean_in_one_kernel_give_the_plain_gradients(compiled_kernels, used):
    """``gate_mean``: x * sigmoid(h) and its mean over time, one compiled kernel each way,
    against the plain ops, with the gradient reaching both outputs, only the mean (a last
    block) or only the output."""
    from backbones.layers import gate_mean

    gen = torch.Generator().manual_seed(0)
    x, h = (torch.randn(4, 3, 7, 5, generator=gen).requires_grad_() for _ in range(2))
    up_out, up_mean = torch.randn(4, 3, 7, 5, generator=gen), torch.randn(4, 3, 5, generator=gen)

    def loss(out, mean):
        return {"both": (out * up_out).sum() + (mean * up_mean).sum(),
                "mean": (mean * up_mean).sum(), "output": (out * up_out).sum()}[used]

    out, mean = gate_mean(x, h)
    assert out.grad_fn is not None and "GateFn" in type(out.grad_fn).__name__  # the kernel ran
    got = torch.autograd.grad(loss(out, mean), (x, h))
    ref_out = x * torch.sigmoid(h)
    want = torch.autograd.grad(loss(ref_out, ref_out.mean(2)), (x, h))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(mean, ref_out.mean(2))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_compiled_kernels_keep_the_eager_maths_and_a_pack_is_still_bit_exact(compiled_kernels):
    """The compiled CPU kernels (BatchNorm + ReLU + dropout, the sigmoid gate) give the eager
    path's outputs and gradients, to float32 rounding, on a 12-channel model (zero-padded weight
    gradients); and a pack of three still trains bit for bit as its runs one by one."""
    from transfer.train.runs import RunState, install_run_state

    def step(on: bool):
        compiled_kernels.set_enabled(on)
        torch.manual_seed(0)
        model = backbones.create("timnet", runs=2, in_features=6, filters=12, blocks=2, split=1,
                                 num_classes=2, dropout=0.2)
        install_run_state(model, RunState.create([3, 4]))
        x = torch.randn(2, 5, 6, 40, generator=torch.Generator().manual_seed(1))
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    with one_thread():
        out_eager, grads_eager = step(False)
        out_comp, grads_comp = step(True)
    assert compiled_kernels.available(torch.device("cpu"))  # no compilation fell back
    torch.testing.assert_close(out_comp, out_eager, rtol=1e-5, atol=1e-6)
    for name, grad in grads_eager.items():
        scale = grad.abs().max().item()
        if name.endswith(("convs.0.bias", "convs.4.bias")):  # a bias before a BatchNorm
            weight_scale = grads_eager[name.replace(".bias", ".weight")].abs().max().item()
            assert grads_comp[name].abs().max().item() < 1e-5 * weight_scale, name  # ~ zero
            continue
        torch.testing.assert_close(grads_comp[name], grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=name)
    compiled_kernels.set_enabled(True)
    _check_pack_equals_one_by_one("joint", _factory12)
    assert compiled_kernels.available(torch.device("cpu"))


# --- K copies as one module ---------------------------------------------------------------------
@pytest.mark.parametrize("opts", [{}, {"stem": "bn_relu", "fusion": "diff", "residual": "add"},
                                  {"attention": "mha", "d_model": 8, "heads": 2}])
def test_packed_backbone_equals_separate_models(opts):
    with one_thread():
        torch.manual_seed(0)
        kw = dict(in_features=6, filters=4, blocks=3, split=1, num_classes=2, dropout=0.0, **opts)
        singles = [backbones.create("timnet", **kw) for _ in range(3)]
        packed = backbones.create("timnet", runs=3, **kw)
        packed.load_state_dict(pack_states([m.state_dict() for m in singles]))
        x = torch.randn(3, 7, 6, 30)
        out = packed(x)
        out.square().sum().backward()
        grads = dict(packed.named_parameters())
        for k, m in enumerate(singles):
            o = m(x[k])
            o.square().sum().backward()
            assert_same_run(o, out[k], m.state_dict(), unpack_state(packed.state_dict(), 3, k),
                            {n: p.grad for n, p in m.named_parameters()},
                            {n: grads[n].grad.chunk(3)[k] for n, _ in m.named_parameters()})


def _before_batchnorm(name: str) -> bool:
    """A convolution's bias right before a BatchNorm: its gradient is zero in exact arithmetic."""
    return name.endswith(("convs.0.bias", "convs.4.bias", "stem.1.conv.bias"))


def assert_same_run(out, out_packed, state, state_packed, grads, grads_packed):
    """One step of a run alone and in a pack: outputs, BatchNorm statistics and gradients equal
    up to float rounding; a gradient that is rounding noise (a bias before a BatchNorm) is ~0
    in both, next to its weight's gradient."""
    torch.testing.assert_close(out_packed, out, rtol=1e-5, atol=1e-6 * out.abs().max().item())
    for name, t in state.items():  # BatchNorm statistics moved the same way
        torch.testing.assert_close(state_packed[name], t, rtol=1e-5, atol=1e-7, msg=name)
    for name, g in grads.items():
        if _before_batchnorm(name):
            scale = grads[name.replace(".bias", ".weight")].abs().max().item()
            assert max(g.abs().max().item(), grads_packed[name].abs().max().item()) \
                < 1e-5 * scale, name
            continue
        torch.testing.assert_close(grads_packed[name], g, rtol=1e-5,
                                   atol=1e-6 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("stem", ["none", "bn"])
def test_packed_layer_weights_equal_separate_models(stem):
    """The ssl front (softmax weights over stacked layers, (K, L)) packs like every layer."""
    with one_thread():
        torch.manual_seed(0)
        kw = dict(in_features=3 * 4, layer_weights=3, filters=4, blocks=2, split=1,
                  num_classes=2, dropout=0.0, stem=stem)
        singles = [backbones.create("timnet", **kw) for _ in range(3)]
        for m in singles:  # different layer weights per run: a mixed-up run would show
            nn.init.normal_(m.general["stem"][0].weight)
        packed = backbones.create("timnet", runs=3, **kw)
        assert packed.general["stem"][0].weight.shape == (3, 3)
        packed.load_state_dict(pack_states([m.state_dict() for m in singles]))
        x = torch.randn(3, 5, 12, 20)  # (K, B, L*D, T)
        out = packed(x)
        out.square().sum().backward()
        grads = dict(packed.named_parameters())
        for k, m in enumerate(singles):
            o = m(x[k])
            o.square().sum().backward()
            assert_same_run(o, out[k], m.state_dict(), unpack_state(packed.state_dict(), 3, k),
                            {n: p.grad for n, p in m.named_parameters()},
                            {n: grads[n].grad.chunk(3)[k] for n, _ in m.named_parameters()})
            assert m.general["stem"][0].weight.grad.abs().min() > 0


def test_transformer_timnet_is_not_packable():
    assert backbones.packable("timnet") and not backbones.packable("transformer_timnet")
    with pytest.raises(backbones.OptionError, match="not packable"):
        backbones.create("transformer_timnet", runs=2, tf_dim=8, tf_heads=2)


def test_counter_based_uniforms():
    seeds = torch.tensor([0, 1, 2])
    u = hash_uniform(seeds, 7, torch.tensor([5, 5, 5]), 20000)
    assert u.shape == (3, 20000) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert torch.equal(u[1], hash_uniform(seeds[1:2], 7, 5, 20000)[0])  # independent of K
    assert not torch.equal(u[0], u[1])
    assert not torch.equal(u[0], hash_uniform(seeds[:1], 7, 6, 20000)[0])  # the counter
    assert not torch.equal(u[0], hash_uniform(seeds[:1], 8, 5, 20000)[0])  # the stream
    assert torch.corrcoef(torch.stack([u[0, :-1], u[0, 1:]]))[0, 1].abs() < 0.03


# --- the packed optimiser keeps torch.optim's update rules --------------------------------------
@pytest.mark.parametrize(("kind", "torch_cls", "extra"), [
    ("adam", torch.optim.Adam, {"betas": (0.93, 0.98), "weight_decay": 0.01}),
    ("adamw", torch.optim.AdamW, {"betas": (0.9, 0.999), "weight_decay": 0.1}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.01}),
])
def test_packed_optimizer_matches_torch_optim(kind, torch_cls, extra):
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    groups = [{"params": [a.weight], "lr": 0.01}, {"params": [a.bias], "lr": 0.05}]
    flat = FlatParams(a, 1)
    ours = PackedOptimizer(flat, groups, kind, 0.01, **extra)
    ref = torch_cls([{"params": [b.weight], "lr": 0.01}, {"params": [b.bias], "lr": 0.05}],
                    **extra)
    x = torch.randn(8, 4)
    for _ in range(5):
        flat.grad.zero_()
        a(x).sin().sum().backward()
        ours.step(torch.ones(1, dtype=torch.bool))
        ref.zero_grad()
        b(x).sin().sum().backward()
        ref.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-7)


def test_masked_run_does_not_move_and_clipping_is_per_run():
    packed = backbones.create("timnet", runs=2, in_features=3, filters=2, blocks=1, split=1)
    flat = FlatParams(packed, 2)
    opt = PackedOptimizer(flat, [{"params": list(packed.parameters())}], "adam", 0.1)
    before = flat.data.clone()
    packed(torch.randn(2, 4, 3, 10)).sum().backward()
    flat.grad.view(-1)[flat.rid == 1] *= 1000  # run 1 has huge gradients
    opt.clip_(1.0)
    norms = flat.grad_norms(opt.params)
    assert norms[1] == pytest.approx(1.0, rel=1e-4) and norms[0] <= 1.0 + 1e-5
    opt.step(torch.tensor([False, True]))
    moved = (flat.data != before)
    assert not moved[flat.rid == 0].any() and moved[flat.rid == 1].any()


# --- a pack trains like its runs one by one (up to rounding) -----------------------------------
def _factory(k: int, runs: int = 1):
    return backbones.create("timnet", runs=runs, in_features=6, filters=4, blocks=3, split=2,
                            num_classes=k, stem="bn", dropout=0.1)


def _factory12(k: int, runs: int = 1):
    """12 channels: the weight gradients take the zero-padded path (``gemm_rows``)."""
    return backbones.create("timnet", runs=runs, in_features=6, filters=12, blocks=2, split=1,
                            num_classes=k, stem="bn", dropout=0.1)


def _ssl_factory(k: int, runs: int = 1):
    """The 6 features as 3 stacked layers of 2 dims, behind learned layer weights."""
    return backbones.create("timnet", runs=runs, in_features=6, layer_weights=3, filters=4,
                            blocks=3, split=2, num_classes=k, stem="bn", dropout=0.1)


@pytest.mark.parametrize("name", names())
def test_pack_of_three_equals_three_runs_one_by_one(name):
    _check_pack_equals_one_by_one(name, _factory)


@pytest.mark.parametrize("name", ["finetune", "dann"])
def test_pack_with_layer_weights_equals_runs_one_by_one(name):
    pretrained = _ssl_factory(3).state_dict()
    pretrained["general.stem.0.weight"] = torch.tensor([[0.5, -1.0, 2.0]])  # (K=1, L=3)
    state = _check_pack_equals_one_by_one(name, _ssl_factory, pretrained)
    weights = state["model.general.stem.0.weight"]  # (3 runs, 3 layers): trained, per run
    assert weights.shape == (3, 3) and not torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], pretrained["general.stem.0.weight"][0])


#: Relative tolerances of a run in a pack against the run alone, per logged value: 10x the
#: largest difference measured (every strategy, 3 epochs) when noise of 1e-9 is added to the
#: gradients of the biases before a BatchNorm (rounding noise of another CPU's kernels; see the
#: module docstring): training losses 1.7e-7, alignment losses 8.6e-6, validation losses
#: 5.6e-4, class probabilities 3.9e-4 (absolute). Accuracies and UARs are not compared: one
#: flipped prediction moves them by a step.
CURVE_RTOL = {"loss": 2e-6, "ce": 2e-6, "ce_source": 2e-6, "adv": 2e-6, "val_loss": 6e-3}
ALIGN_RTOL = 1e-4
PROB_ATOL = 4e-3


def _check_pack_equals_one_by_one(name, factory, pretrained=None, draws=None):
    """Train three runs one by one and as one pack; their curves and their models' outputs
    must agree up to rounding (every epoch is kept: selection by a noisy score could pick
    different epochs on another CPU). ``draws``: per run, (options, training settings) that
    differ (a sweep's draws packed in one model). Returns the pack's state."""
    xt, y, source, folds = pack_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, amp=False, grad_clip=1.0, select="last")
    ctx = Context(factory, 2, 3, factory(3).state_dict() if pretrained is None else pretrained,
                  0.1)
    cls = get_strategy(name)
    if cls.target_labels == "none":  # classifies with the source's head: the unlabelled mode
        ctx = ctx.unlabelled()
    opts = _quick(cls.Options())
    runs = draws or [(opts, cfg)] * 3

    def target(fs):
        return DomainTensors(xt, y, [Standardizer.fit(xt, tr) for tr, _ in fs],
                             [tr for tr, _ in fs], [va for _, va in fs])

    seeds = [0, 1, 2]
    everything = torch.arange(len(y))
    with one_thread():
        alone = []
        for fold, seed, (o, c) in zip(folds, seeds, runs, strict=True):
            s = build_pack(cls, ctx, o, [seed])
            result = fit_runs(s, target([fold]), source, c, [seed], torch.device("cpu"))[0]
            alone.append((result, predict_runs(s, target([fold]), [everything])[0]))
        packed = build_pack(cls, ctx, [o for o, _ in runs], seeds)
        results = fit_runs(packed, target(folds), source, [c for _, c in runs], seeds,
                           torch.device("cpu"))
        probs = predict_runs(packed, target(folds), [everything] * 3)
    for k, (result, prob) in enumerate(alone):
        assert result.best_epoch == results[k].best_epoch == 3
        assert len(result.curves) == len(results[k].curves) == 3
        for a, b in zip(result.curves, results[k].curves, strict=True):
            assert a.keys() == b.keys()
            for key in a:  # logged means: validation sets are padded to the pack's longest
                if "acc" in key or "uar" in key:
                    continue
                rtol = CURVE_RTOL.get(key, ALIGN_RTOL if key.startswith("align_") else 1e-6)
                assert b[key] == pytest.approx(a[key], rel=rtol, abs=1e-7), key
        torch.testing.assert_close(probs[k], prob, rtol=0, atol=PROB_ATOL)
    return packed.state_dict()


def _quick(opts):
    """Options with alignment phases every epoch and short (so 3 epochs exercise them)."""
    for key in ("align_every", "align_steps", "ae_epochs"):
        if hasattr(opts, key):
            setattr(opts, key, 1)
    return opts


@pytest.mark.parametrize("name", names())
def test_a_pack_of_different_draws_trains_like_each_draw_alone(name):
    """A sweep's draws of one strategy in one pack: every per-run hyperparameter its search
    space declares (learning rates, weight decay, loss weights, schedule constants) differs
    between the three runs, which train as they do alone."""
    import numpy as np

    from transfer.common.options import is_per_run, search_space

    cls = get_strategy(name)
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(3):
        values = {k: space.sample(rng) for k, space in search_space(cls.Options).items()
                  if is_per_run(cls.Options, k)}
        opts = _quick(dataclasses.replace(cls.Options(), **values))
        cfg = TrainConfig(epochs=3, batch_size=16, lr=float(rng.uniform(1e-3, 5e-3)),
                          weight_decay=float(rng.uniform(0, 1e-3)), amp=False, grad_clip=1.0,
                          select="last")
        draws.append((opts, cfg))
    _check_pack_equals_one_by_one(name, _factory, draws=draws)


def test_a_run_that_stops_early_leaves_its_pack_mates_as_they_were():
    """Early stopping masks a run for the rest of the fit: run 0 (no validation subjects, so
    its score never improves) stops after ``patience`` epochs, and run 1 trains as it does
    alone."""
    xt, y, source, folds = pack_data()
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, amp=False, patience=1, select="val_loss")
    ctx = Context(_factory, 2, 0, None, 0.1)
    cls = get_strategy("scratch")
    norms = [Standardizer.fit(xt, tr) for tr, _ in folds[:2]]
    both = DomainTensors(xt, y, norms, [folds[0][0], folds[1][0]], [None, folds[1][1]])
    with one_thread():
        packed = build_pack(cls, ctx, cls.Options(), [0, 1])
        results = fit_runs(packed, both, None, cfg, [0, 1], torch.device("cpu"))
        single = build_pack(cls, ctx, cls.Options(), [1])
        alone = fit_runs(single, DomainTensors(xt, y, norms[1], folds[1][0], folds[1][1]), None,
                         cfg, [1], torch.device("cpu"))[0]
    assert results[0].epochs_run == 2 and results[0].best_epoch == 1
    assert len(results[1].curves) == len(alone.curves)
    for a, b in zip(alone.curves, results[1].curves, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=CURVE_RTOL["loss"])
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=CURVE_RTOL["val_loss"])


# --- the captured step: its control flow, with a stand-in for the CUDA graph API ----------------
class _FakeGraph:
    captured = 0

    def __init__(self) -> None:
        self.fn = None

    def replay(self) -> None:
        self.fn()


class _FakeCuda:
    """torch.cuda's graph API on the CPU: a 'graph' re-runs the captured function, which is
    what replaying a graph over static inputs computes."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.capturing = fail, False

    CUDAGraph = _FakeGraph

    @contextlib.contextmanager
    def graph(self, g):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        _FakeGraph.captured += 1
        self.capturing = True  # recorded, not executed: a real capture launches nothing
        yield
        self.capturing = False
        g.fn = self._last

    def Stream(self, device):  # noqa: N802
        return self

    @contextlib.contextmanager
    def stream(self, s):
        yield

    def current_stream(self, device):
        return self

    def wait_stream(self, s) -> None:
        pass

    def synchronize(self, device=None) -> None:
        pass


@pytest.mark.parametrize("fail", [False, True])
def test_step_runner_warms_up_captures_once_and_replays(monkeypatch, fail):
    fake = _FakeCuda(fail)
    monkeypatch.setattr(torch, "cuda", fake)
    calls = []

    def step():
        if not fake.capturing:
            calls.append(1)
        fake._last = step

    runner = StepRunner(step, torch.device("cuda"), capture=True, warmup=2)
    _FakeGraph.captured = 0
    if fail:
        with pytest.warns(UserWarning, match="capture failed"):
            for _ in range(6):
                runner()
        assert not runner.capture and len(calls) == 6
    else:
        for _ in range(6):
            runner()
        assert _FakeGraph.captured == 1 and runner.graph is not None and len(calls) == 6


class _RecordedGraph:
    """A CUDA graph's semantics on the CPU. Capture records the aten ops a step runs (below
    autograd, so the backward pass's too) with the very tensors they touched; replay runs them
    again on those tensors, writing each fresh result into the tensor captured as that op's
    output. So, as with a real graph, what the step computes in Python at capture time (a
    float, a new tensor kept outside, a shape) is baked in, and only values read from the
    captured tensors change between replays. As on a GPU, capturing leaves no trace (every
    write made while recording is undone) and a host sync (``.item()``, ``bool(tensor)``)
    fails the capture."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.replays = 0

    def replay(self) -> None:
        from torch.utils._pytree import tree_leaves

        self.replays += 1
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                fresh = func(*args, **kwargs)
                for old, new in zip(tree_leaves(out), tree_leaves(fresh), strict=True):
                    if (isinstance(old, torch.Tensor) and old.numel()
                            and old.untyped_storage().data_ptr()
                            != new.untyped_storage().data_ptr()):
                        old.copy_(new)  # a new tensor: into the captured output's memory


class _Recorder:
    """``torch.cuda.graph(g)`` for :class:`_RecordedGraph`: a dispatch mode that records."""

    def __init__(self, graph: _RecordedGraph) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        undo: list[tuple[torch.Tensor, torch.Tensor]] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.ops.aten._local_scalar_dense.default:
                    raise RuntimeError("a host sync while the stream is capturing")
                for i, arg in enumerate(func._schema.arguments):
                    if arg.alias_info is not None and arg.alias_info.is_write:
                        value = args[i] if i < len(args) else kwargs.get(arg.name)
                        undo.extend((t, t.clone()) for t in tree_leaves(value)
                                    if isinstance(t, torch.Tensor))
                out = func(*args, **kwargs)
                graph.ops.append((func, args, kwargs, out))
                return out

        self.mode, self.undo = Mode(), undo

    def __enter__(self) -> None:
        self.mode.__enter__()

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
        with torch.no_grad():
            for t, before in reversed(self.undo):
                t.copy_(before)


class _RecordingCuda(_FakeCuda):
    CUDAGraph = _RecordedGraph
    _real = torch.cuda

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[_RecordedGraph] = []

    def __getattr__(self, name):  # the rest of torch.cuda (torch.manual_seed asks it things)
        return getattr(self._real, name)

    def graph(self, g):
        self.graphs.append(g)
        return _Recorder(g)


@pytest.mark.parametrize("name", names())
def test_a_captured_and_replayed_step_trains_exactly_like_the_eager_step(monkeypatch, name):
    """The training step as the CUDA path runs it (warm-up, one capture, replays), emulated
    on the CPU by :class:`_RecordedGraph`, gives the eager step's curves and weights bit for
    bit: nothing the step needs is a Python value frozen at capture (the learning-rate
    schedule, per-run counters, the phase's progress, the batch indices, what is logged), it
    syncs with the host nowhere, and every phase of a strategy gets a graph of its own."""
    from transfer.train import engine

    folds, seeds, cpu = pack_data()[3], [0, 1, 2], torch.device("cpu")
    with one_thread():
        eager, eager_state = _fit_on(name, cpu, seeds, folds)
        fake = _RecordingCuda()
        monkeypatch.setattr(torch, "cuda", fake)
        init = engine._Trainer.__init__

        def on_cpu_as_on_cuda(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.capture = True

        monkeypatch.setattr(engine._Trainer, "__init__", on_cpu_as_on_cuda)
        captured, captured_state = _fit_on(name, cpu, seeds, folds)
    cls, ctx, opts = _pack_setup(name)
    phases = len(build_pack(cls, ctx, opts, seeds).phases())
    assert len(fake.graphs) == 1 + phases and all(g.replays > 0 for g in fake.graphs)
    for a, b in zip(eager, captured, strict=True):
        assert a.curves == b.curves and a.best_epoch == b.best_epoch
    for key, value in eager_state.items():
        assert torch.equal(value, captured_state[key]), key


# --- the same on a GPU (skipped without one; .ci/gpu runs them where a GPU is lent) -------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def fp32_cuda():
    """Full fp32 on the GPU: no TF32 in matrix products or convolutions."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _on(dom: DomainTensors, device: torch.device) -> DomainTensors:
    return DomainTensors(dom.x.to(device), dom.y.to(device),
                         [Standardizer(n.mean.to(device), n.std.to(device), n.enabled)
                          for n in dom.norm],
                         [t.to(device) for t in dom.train],
                         [None if v is None else v.to(device) for v in dom.val])


def _pack_setup(name: str):
    """A strategy's class, context (the same pretrained source model in every call) and
    options with every alignment phase past its warm-up and a phase schedule."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ctx = Context(_factory, 2, 3, _factory(3).state_dict(), 0.1)
    cls = get_strategy(name)
    if cls.target_labels == "none":  # classifies with the source's head: the unlabelled mode
        ctx = ctx.unlabelled()
    opts = cls.Options()
    for key, value in (("align_every", 1), ("align_steps", 5), ("ae_epochs", 1),
                       ("align_step_size", 1)):
        if hasattr(opts, key):
            setattr(opts, key, value)
    return cls, ctx, opts


def _fit_on(name: str, device: torch.device, seeds: list[int], folds: list, amp: bool = False,
            capture: bool = True):
    """Train ``seeds`` (run k on ``folds[k]``) as one pack on ``device``; results, CPU state."""
    xt, y, source, _ = pack_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, amp=amp, grad_clip=1.0,
                      schedule="step", step_size=1, gamma=0.5, cuda_graph=capture,
                      select="last")  # a UAR that one flipped prediction moves selects nothing
    cls, ctx, opts = _pack_setup(name)
    target = DomainTensors(xt, y, [Standardizer.fit(xt, tr) for tr, _ in folds],
                           [tr for tr, _ in folds], [va for _, va in folds])
    strategy = build_pack(cls, ctx, opts, seeds)
    with warnings.catch_warnings():  # a capture that falls back to eager fails the test
        warnings.filterwarnings("error", message="CUDA graph capture failed")
        results = fit_runs(strategy, _on(target, device), _on(source, device), cfg, seeds,
                           device)
    return results, {k: v.cpu() for k, v in strategy.state_dict().items()}


def _assert_same_curves(a: list, b: list, rtol: float, val_rtol: float) -> None:
    """Two fits' per-epoch logs: the same epochs and model selection, losses within ``rtol``
    (validation losses ``val_rtol``); accuracies and UARs are counts that a prediction at the
    decision boundary may flip, so they are not compared.

    Across devices the weights are not compared either: a parameter whose gradient is rounding
    noise alone (a convolution's bias ahead of BatchNorm) takes Adam steps of +-lr in a
    direction that the rounding decides. Measured on the CPU with the pack's inputs perturbed
    by 1e-6 (relative) against the runs alone, 3 epochs, every strategy: such biases and the
    running means differ by up to 35 %, the training losses by <= 2.6e-7, the alignment
    losses by <= 1.5e-5 and the validation losses by <= 3e-4 (relative)."""
    for x, y in zip(a, b, strict=True):
        assert x.best_epoch == y.best_epoch and len(x.curves) == len(y.curves)
        for cx, cy in zip(x.curves, y.curves, strict=True):
            assert cx.keys() == cy.keys()
            for key in cx:
                if not key.endswith(("acc", "uar")):
                    tol = val_rtol if key.startswith("val_") else rtol
                    assert cx[key] == pytest.approx(cy[key], rel=tol, abs=1e-6), key


@cuda
@pytest.mark.parametrize("name", names())
def test_on_a_gpu_a_captured_pack_trains_like_its_runs_one_by_one_on_the_cpu(fp32_cuda, name):
    """Every strategy, fp32: three runs as one captured pack on the GPU against each run
    alone on the CPU (bit-exact there, see above); the GPU's kernels sum in other orders, so
    the curves agree to the tolerances of :func:`_assert_same_curves` (66x to 400x the
    differences that rounding alone makes on the CPU)."""
    folds = pack_data()[3]
    on_gpu = _fit_on(name, fp32_cuda, [0, 1, 2], folds)[0]
    with one_thread():
        alone = [_fit_on(name, torch.device("cpu"), [seed], [folds[k]])[0][0]
                 for k, seed in enumerate([0, 1, 2])]
    _assert_same_curves(on_gpu, alone, rtol=1e-3, val_rtol=5e-3)


@cuda
@pytest.mark.parametrize("name", ["scratch", "dann", "ddg"])
def test_on_a_gpu_the_captured_step_equals_the_eager_step(fp32_cuda, name):
    """The real CUDA graph against the same step run eagerly on the same GPU: the same
    kernels, so the same curves (to the order of any atomic additions)."""
    folds = pack_data()[3]
    captured = _fit_on(name, fp32_cuda, [0, 1, 2], folds, capture=True)[0]
    eager = _fit_on(name, fp32_cuda, [0, 1, 2], folds, capture=False)[0]
    _assert_same_curves(captured, eager, rtol=1e-5, val_rtol=1e-5)


@cuda
@pytest.mark.parametrize("name", ["scratch", "ddg"])
def test_on_a_gpu_bf16_autocast_trains_a_captured_pack(name):
    """bf16 autocast, captured: finite losses that fall, fp32 weights."""
    results, state = _fit_on(name, torch.device("cuda"), [0, 1, 2], pack_data()[3], amp=True)
    for r in results:
        losses = [row["ce"] for row in r.curves]
        assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_cpu_pack_size_keeps_a_pack_activation_within_budget_and_splits_evenly():
    """On a CPU the default pack holds as many runs as keep one activation of the pack
    within CPU_PACK_BYTES; a strategy's runs are split into packs of nearly equal size."""
    from transfer.bench import synthetic_domains
    from transfer.grid.experiment import CPU_PACK_BYTES, Experiment
    from transfer.grid.recipe import parse_recipe

    target, _ = synthetic_domains(20, 2, 12)  # 39 x 313 segments
    per_run_64 = 2 * 64 * 39 * 313 * 4

    def experiment(batch: int, pack: int = 0) -> Experiment:
        recipe = parse_recipe({
            "name": "packs", "seeds": [0, 1, 2], "target": {"corpus": "modma"},
            "device": "cpu", "train": {"batch_size": batch, "pack": pack},
            "protocol": {"folds": 5}, "diagnostics": {"enabled": False},
            "strategies": [{"name": "scratch"}]})
        exp = Experiment(recipe, progress=False)
        exp.target = target
        exp.build_splits()
        return exp

    big = experiment(64)
    assert big.pack_size() == CPU_PACK_BYTES // per_run_64 == 8
    sizes = sorted(len(p) for p in big.packs(big.plan()))
    assert sizes == [7, 8]  # 15 runs: two packs
    assert experiment(16).pack_size() == 16  # small batches: every run of the entry
    assert experiment(64, pack=4).pack_size() == 4  # the recipe decides when it says
    assert sorted(len(p) for p in experiment(64, pack=6).packs(big.plan())) == [5, 5, 5]


def test_bench_counts_the_models_flops_including_the_shifted_taps():
    """The bench's FLOPs per segment are the model's: every conv tap, forward and backward.
    torch's flop counter misses the fused model's in-place ``baddbmm_`` taps (it would report
    about 0.12 GFLOP); the lower bound below is the taps alone: 8 blocks x 2 convs x 2
    directions x 2 taps x 39 x 39 x 313 multiply-adds, x 2 FLOPs, x 3 (forward, two backward)."""
    from transfer.bench import flops_per_segment

    taps = 8 * 2 * 2 * 2 * 39 * 39 * 313 * 2 * 3
    flops = flops_per_segment(torch.device("cpu"))
    assert taps <= flops < 1.1 * taps


def test_bench_peak_follows_the_instruction_sets_the_cpu_reports():
    """The fraction of peak is taken against what the CPU can do: an AVX-512 CPU has twice the
    fp32 FLOPs per cycle of an AVX2 one, and with AMX a bf16 run is measured against AMX."""
    from transfer.bench import cpu_flops_per_cycle

    amd = {"avx", "avx2", "fma"}
    xeon = amd | {"avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_flops_per_cycle(amd)[0] == 32 and cpu_flops_per_cycle(amd, bf16=True)[0] == 32
    assert cpu_flops_per_cycle(xeon)[0] == 64
    assert cpu_flops_per_cycle(xeon, bf16=True) == (1024, "AMX-BF16")
    assert cpu_flops_per_cycle(xeon - {"amx_bf16"}, bf16=True)[0] == 128
    assert cpu_flops_per_cycle({"sse", "sse2"})[0] == 8


def test_bench_sweep_reports_packed_and_one_by_one_throughput_and_the_halving_saving(
        monkeypatch):
    """The sweep measure trains the same draws packed, one by one and with halving, and
    reports each (on tiny features here: the sizes are the bench's business)."""
    from transfer import bench

    real = bench.synthetic_domains

    def tiny(subjects, per_subject, source_n, seed=0):
        target, source = real(12, 3, 24, seed)
        target.x, source.x = target.x[:, :, :16].copy(), source.x[:, :, :16].copy()
        return target, source

    monkeypatch.setattr(bench, "synthetic_domains", tiny)
    heard = []
    with one_thread():
        out = bench.bench_sweep(torch.device("cpu"), quick=True, draws=4, epochs=3,
                                strategy="scratch", report=heard.append)
    assert [h.split(":")[0] for h in heard] == ["sweep packed", "sweep one_by_one",
                                                "sweep halving"]
    assert out["sweep_runs"] == 4 * 2
    assert out["sweep_draws_per_hour_packed"] > 0 and out["sweep_draws_per_hour_one_by_one"] > 0
    assert out["sweep_packed_speedup"] > 0 and out["sweep_halving_saving"] < 1
    assert out["sweep_halving_dropped_the_selected_draw"].endswith("of 2 folds")


def test_bench_grid_slice_keeps_the_first_runs_of_every_strategy():
    """``--grid-runs N`` times the first N runs of each strategy entry, in plan order."""
    from transfer.bench import first_runs
    from transfer.grid.experiment import RunSpec

    plan = [RunSpec(s, fold, seed, f"{s}{fold}{seed}") for s in ("a", "b")
            for seed in (0, 1) for fold in range(3)]
    kept = first_runs(plan, 2)
    assert [(r.strategy, r.fold, r.seed) for r in kept] == [("a", 0, 0), ("a", 1, 0),
                                                            ("b", 0, 0), ("b", 1, 0)]
    assert first_runs(plan, 6) == plan and first_runs(plan, 9) == plan


def test_bench_grid_extrapolation_separates_setup_from_epochs():
    """1 epoch in 30 s and 3 epochs in 50 s: 10 s per epoch and 20 s of setup; 60 epochs of
    5x the slice's runs: 20 + 10 x 60 x 5 s. A longer run timed faster (noise) gives 0 s per
    epoch, never a negative cost."""
    from transfer.bench import extrapolate

    assert extrapolate(30.0, 50.0, 2, 60, 5.0) == (20.0, 10.0, 3020.0)
    assert extrapolate(22.3, 20.2, 1, 3, 2.0) == (22.3, 0.0, 22.3)


@pytest.mark.parametrize("flag", ["--grid-runs", "--grid-epochs"])
def test_bench_rejects_a_negative_grid_slice(flag, capsys):
    from transfer.bench import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--skip", "features", "train", "grid", flag, "-1"])
    assert exit_info.value.code == 2 and "positive number" in capsys.readouterr().err


def test_a_bench_that_is_stopped_keeps_the_figures_it_has_measured(tmp_path, monkeypatch,
                                                                     capsys):
    """Each measurement is printed as it is taken and the JSON is written after every section
    ("partial" until the end): a bench stopped in its profile (a time limit, Ctrl-C) leaves
    the training figures on disk and in its log."""
    import json

    from transfer import bench

    def training(*args, report=None, **kwargs):
        report("reference loop: 123.4 segment-steps/s")
        return {"reference_segments_per_s": 123.4}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_training", training)
    monkeypatch.setattr(bench, "profile_step", stopped)
    assert bench.main(["--device", "cpu", "--skip", "features", "grid", "sweep",
                       "--results-dir", str(tmp_path)]) == 130  # Ctrl-C's exit status
    saved = list((tmp_path / "bench").glob("*.json"))
    assert len(saved) == 1
    result = json.loads(saved[0].read_text())
    assert result["partial"] is True and result["reference_segments_per_s"] == 123.4
    assert "reference loop: 123.4 segment-steps/s" in capsys.readouterr().err

    monkeypatch.setattr(bench, "profile_step", lambda device: [])
    bench.main(["--device", "cpu", "--skip", "features", "grid", "sweep",
                "--results-dir", str(tmp_path / "whole")])
    (whole,) = (tmp_path / "whole" / "bench").glob("*.json")
    assert "partial" not in json.loads(whole.read_text())


def test_bench_training_reports_every_measurement_and_keeps_each_ones_best(monkeypatch):
    """The real ``bench_training`` with its timed loops replaced by known figures: every
    measurement of every repeat is heard, in the order taken, and the result keeps the best."""
    from transfer import bench

    figures = iter([100.0, 200.0, 300.0, 400.0,    # repeat 1: reference, one, packed, workers
                    150.0, 180.0, 330.0, 360.0])   # repeat 2
    monkeypatch.setattr(bench, "reference_loop", lambda *a, **k: next(figures))
    monkeypatch.setattr(bench, "engine_loop", lambda *a, **k: next(figures))
    monkeypatch.setattr(bench, "engine_workers", lambda *a, **k: next(figures))
    monkeypatch.setattr(bench, "flops_per_segment", lambda device: 1e9)
    monkeypatch.setattr(bench, "device_peak", lambda device, bf16=False: (1e12, "stated"))
    heard: list[str] = []
    result = bench.bench_training(torch.device("cpu"), 8, 1, 3, False, amp=False, repeats=2,
                                  workers=2, report=heard.append)
    assert heard == ["reference loop: 100.0 segment-steps/s",
                     "engine, one run: 200.0 segment-steps/s",
                     "engine, 3 packed runs: 300.0 segment-steps/s",
                     "engine, 3 packed runs over 2 workers: 400.0 segment-steps/s",
                     "reference loop: 150.0 segment-steps/s",
                     "engine, one run: 180.0 segment-steps/s",
                     "engine, 3 packed runs: 330.0 segment-steps/s",
                     "engine, 3 packed runs over 2 workers: 360.0 segment-steps/s"]
    assert (result["reference_segments_per_s"], result["engine_segments_per_s"],
            result["packed_segments_per_s"], result["packed_workers_segments_per_s"]) == (
        150.0, 200.0, 330.0, 400.0)
    assert result["packed_speedup_vs_reference"] == 2.2
