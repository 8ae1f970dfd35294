import copy
import logging
import os
import shutil

import pytest
import torch
from torch import nn

from lsr1 import native
from lsr1.nn import BasicBlock, ElementwiseMLP, linear_bn
from tests.helpers import assert_close


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Each training-mode test runs on the C kernels and on torch's operators."""
    if request.param == "torch":
        monkeypatch.setattr(native, "linear_bn", lambda: None)
    return request.param


def _reference(x, linear, bn, prelu):
    z = bn(linear(x))
    return prelu(z) if prelu is not None else z


def _trained_modules():
    """Linear(6, 5), BatchNorm1d(5) with non-trivial affine weights, PReLU; and an independent copy."""
    linear, bn, prelu = nn.Linear(6, 5).double(), nn.BatchNorm1d(5, momentum=0.1).double(), nn.PReLU(init=0.3).double()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    return (linear, bn, prelu), copy.deepcopy((linear, bn, prelu))


@pytest.mark.parametrize("with_prelu", [True, False])
def test_linear_bn_matches_torch_modules_in_training(with_prelu, path):
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    (linear, bn, prelu), ref = _trained_modules()
    weight = torch.randn(40, 5, dtype=torch.float64)
    mods = [linear, bn] + ([prelu] if with_prelu else [])
    ref_mods = list(ref[:2]) + ([ref[2]] if with_prelu else [])
    params = [x] + [p for m in mods for p in m.parameters()]
    ref_params = [x] + [p for m in ref_mods for p in m.parameters()]
    out = linear_bn(x, linear, bn, prelu if with_prelu else None)
    expected = _reference(x, ref[0], ref[1], ref[2] if with_prelu else None)
    assert_close(out, expected, what="forward")
    for got, want in zip(torch.autograd.grad((out * weight).sum(), params), torch.autograd.grad((expected * weight).sum(), ref_params)):
        assert_close(got, want, what="gradient")
    assert_close(bn.running_mean, ref[1].running_mean, what="running mean")
    assert_close(bn.running_var, ref[1].running_var, what="running var")


@pytest.mark.parametrize("with_prelu", [True, False])
def test_linear_bn_eval_folds_running_statistics(with_prelu):
    linear, bn, prelu = nn.Linear(6, 5).double(), nn.BatchNorm1d(5).double(), nn.PReLU(init=0.3).double()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    bn.eval()
    x = torch.randn(7, 6, dtype=torch.float64)
    assert_close(linear_bn(x, linear, bn, prelu if with_prelu else None), _reference(x, linear, bn, prelu if with_prelu else None))


def test_linear_bn_problem_statistics_in_eval_normalise_each_problem_alone():
    linear, bn = nn.Linear(3, 4).double(), nn.BatchNorm1d(4).double()
    bn.eval()
    x = torch.randn(2 * 9, 3, dtype=torch.float64)
    out = linear_bn(x, linear, bn, None, norm="problem", problems=2)
    assert_close(out.reshape(2, 9, 4).mean(1), torch.zeros(2, 4, dtype=torch.float64), atol=1e-12)
    assert_close(out[9:], linear_bn(x[9:], linear, bn, None, norm="problem", problems=1))  # alone = in the batch
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_mean, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("with_prelu", [True, False])
def test_weighted_batch_statistics_leave_out_rows_of_weight_zero(with_prelu, path):
    """Rows of weight 0 (frozen problems) are normalised with the others' statistics but do not move them:
    the live rows' outputs and gradients equal those of the live rows alone, and the running statistics
    are those of the live rows."""
    x = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    (linear, bn, prelu), ref = _trained_modules()
    live = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    with torch.no_grad():
        x[live == 0] *= 1e6  # a frozen problem's huge state must not matter
    mask = live.bool()
    out = linear_bn(x, linear, bn, prelu if with_prelu else None, weights=live)
    alone = linear_bn(x[mask], ref[0], ref[1], ref[2] if with_prelu else None)
    assert_close(out[mask], alone, what="forward")
    weight = torch.randn(int(mask.sum()), 5, dtype=torch.float64)
    grads = torch.autograd.grad((out[mask] * weight).sum(), [x, linear.weight, bn.weight])
    want = torch.autograd.grad((alone * weight).sum(), [x, ref[0].weight, ref[1].weight])
    assert_close(grads[0][mask], want[0][mask], what="input gradient")
    assert torch.count_nonzero(grads[0][~mask]) == 0
    for got, expected in zip(grads[1:], want[1:]):
        assert_close(got, expected, what="parameter gradient")
    assert_close(bn.running_mean, ref[1].running_mean, what="running mean")
    assert_close(bn.running_var, ref[1].running_var, what="running var")


def test_native_kernels_build_where_there_is_a_c_compiler(monkeypatch):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the torch path is the one in use")
    monkeypatch.setenv("LSR1_NATIVE", "1")  # built even where this run has them off (LSR1_NATIVE=0)
    native.linear_bn.cache_clear()
    try:
        assert native.linear_bn() is not None
    finally:
        native.linear_bn.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_prelu", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_native_kernels_agree_with_torch_operators(dtype, with_prelu, weighted, monkeypatch):
    """Outputs, every gradient (the residual's included) and the running statistics of the C kernels equal
    those of torch's operators to rounding, on a hidden-layer shape of a meta-iteration."""
    if native.linear_bn() is None:
        off = os.environ.get("LSR1_NATIVE") == "0"
        pytest.skip("the C kernels are off in this run (LSR1_NATIVE=0)" if off else "the C kernels could not be built here")
    rows, width = 96, 33
    linear, bn, prelu = nn.Linear(width, width).to(dtype), nn.BatchNorm1d(width, momentum=0.1).to(dtype), nn.PReLU(init=0.3).to(dtype)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        linear.bias.normal_(std=3.0)  # a bias far from zero: the kernels add it to the mean only
    x = torch.randn(rows, width, dtype=dtype, requires_grad=True)
    residual = torch.randn(rows, width, dtype=dtype, requires_grad=True)
    weights = (torch.rand(rows, dtype=dtype) > 0.3).to(dtype) if weighted else None
    upstream = torch.randn(rows, width, dtype=dtype)
    results = []
    for use_native in (True, False):
        if not use_native:
            monkeypatch.setattr(native, "linear_bn", lambda: None)
        mods = copy.deepcopy((linear, bn, prelu))
        out = linear_bn(x, mods[0], mods[1], mods[2] if with_prelu else None, weights=weights, residual=residual)
        params = [x, residual, mods[0].weight, mods[0].bias, mods[1].weight, mods[1].bias] + ([mods[2].weight] if with_prelu else [])
        grads = torch.autograd.grad((out * upstream).sum(), params)
        results.append([out, *grads, mods[1].running_mean, mods[1].running_var])
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for i, (got, want) in enumerate(zip(*results)):
        # the bias gradient is zero up to rounding (the bias cancels in BatchNorm): compare on the others' scale
        assert_close(
            got, want, atol=tol * max(1.0, float(want.detach().abs().max())) if i != 4 else tol * 100, rtol=tol, what=f"result {i}"
        )


def test_linear_bn_adds_the_residual_and_passes_it_the_output_gradient(path):
    x = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    (linear, bn, prelu), (ref_linear, ref_bn, ref_prelu) = _trained_modules()
    out = linear_bn(x, linear, bn, prelu, residual=residual)
    assert_close(out, _reference(x, ref_linear, ref_bn, ref_prelu) + residual, what="forward")
    upstream = torch.randn(20, 5, dtype=torch.float64)
    assert_close(torch.autograd.grad((out * upstream).sum(), residual)[0], upstream, what="residual gradient")


def test_native_build_failure_falls_back_to_torch_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LSR1_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("LSR1_NATIVE", "1")  # tried even where this run has them off (LSR1_NATIVE=0)
    native.linear_bn.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lsr1.native"):
            assert native.linear_bn() is None
        assert "cannot build linear_bn_kernels.c" in caplog.text and "torch's operators" in caplog.text
        assert not list(tmp_path.iterdir())  # no half-written library left behind
        (linear, bn, prelu), ref = _trained_modules()  # and training still works, on torch's operators
        x = torch.randn(10, 6, dtype=torch.float64)
        assert_close(linear_bn(x, linear, bn, prelu), _reference(x, *ref))
    finally:
        native.linear_bn.cache_clear()


def test_elementwise_mlp_is_table5_and_acts_per_coordinate():
    mlp = ElementwiseMLP(5, 1, hidden=16).double()
    names = [n for n, _ in mlp.named_children()]
    assert names == ["fc1", "bn1", "prelu", "do1", "mlp1", "mlp2", "fc2"]
    assert [n for n, _ in BasicBlock(8).named_children()] == ["fc1", "bn1", "prelu", "do1", "fc2", "bn2", "do2"]
    mlp.eval()
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    out = mlp(x)
    assert out.shape == (3, 11, 1)
    # in eval mode with running statistics each coordinate is processed on its own; one row and 33 rows may be
    # multiplied in another summation order (by CPU), which float64 keeps near 1e-16: 1e-12 holds with room
    assert_close(mlp(x[1:2, 4:5]), out[1:2, 4:5], atol=1e-12, rtol=1e-12)


def test_elementwise_mlp_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        ElementwiseMLP(0, 1)
    with pytest.raises(ValueError, match="dropout"):
        ElementwiseMLP(5, 1, dropout=1.0)
