"""Gradient reversal and MMD against reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from transfer.evaluate.distances import MultiKernelMMD, mmd_reference
from transfer.train.alignment import GradientReversal, grl_coefficient, reverse_gradient


def test_reversal_gradient_is_minus_lambda_times_plain():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    x = torch.randn(4, 5, requires_grad=True)
    (x @ w).pow(2).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    (reverse_gradient(x, 0.7) @ w).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * plain)


def test_reversal_schedule():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    layer = GradientReversal(max_coeff=0.5)
    layer.progress = 1.0
    assert layer.coeff == pytest.approx(0.5 * grl_coefficient(1.0))
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -layer.coeff))


def test_mmd_matches_direct_kernel_formula():
    torch.manual_seed(1)
    x, y = torch.randn(20, 6), torch.randn(25, 6) * 1.3 + 0.4
    mmd = MultiKernelMMD(kernels=5, ratio=2.0)
    bw = mmd.bandwidths(x, y)
    assert len(bw) == 5 and bw[3] / bw[2] == pytest.approx(2.0)
    torch.testing.assert_close(mmd(x, y), mmd_reference(x, y, bw), rtol=1e-4, atol=1e-6)


def test_mmd_zero_for_identical_and_grows_with_shift():
    torch.manual_seed(2)
    x = torch.randn(50, 8)
    mmd = MultiKernelMMD()
    assert mmd(x, x).abs() < 1e-5
    small, large = mmd(x, torch.randn(50, 8) + 0.5), mmd(x, torch.randn(50, 8) + 3.0)
    assert 0 < small < large


def test_mmd_has_gradient():
    x = torch.randn(10, 4, requires_grad=True)
    MultiKernelMMD()(x, torch.randn(12, 4) + 1).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mmd_of_packed_runs_equals_each_run_alone():
    torch.manual_seed(3)
    x, y = torch.randn(3, 16, 8), torch.randn(3, 20, 8) * 1.5 + 0.3
    packed = MultiKernelMMD()(x, y)
    assert packed.shape == (3,)
    for k in range(3):
        torch.testing.assert_close(packed[k], MultiKernelMMD()(x[k], y[k]))


def test_reversal_coefficient_per_run():
    x = torch.ones(3, 4, 2, requires_grad=True)
    reverse_gradient(x, torch.tensor([0.0, 0.5, 1.0])).sum().backward()
    assert x.grad[:, 0, 0].tolist() == [0.0, -0.5, -1.0]
