"""The fused head + cross-entropy against the unfused computation it replaces."""

import pytest
import torch
import torch.nn.functional as F

from components.model import fused_loss
from components.model.fused_loss import linear_cross_entropy


def _inputs(n: int, vocab: int = 97, hidden: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g) * 0.5)
    targets = torch.randint(0, vocab, (n,), generator=g)
    return x, w, targets


def _grads(loss_fn, x, w, targets, **kw):
    x.grad = w.grad = None
    loss = loss_fn(x, w, targets, **kw)
    loss.backward()
    return loss.detach(), x.grad.clone(), w.grad.clone()


def _unfused(x, w, targets, reduction="mean"):
    return F.cross_entropy(F.linear(x, w).float(), targets, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 7, 256, 600])  # one slice, a partial one, exactly one, three
def test_fp32_matches_unfused_loss_and_gradients(monkeypatch, reduction, n):
    monkeypatch.setattr(fused_loss, "CHUNK_ROWS", 256)
    x, w, targets = _inputs(n)
    want = _grads(_unfused, x, w, targets, reduction=reduction)
    got = _grads(linear_cross_entropy, x, w, targets, reduction=reduction)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_small_slices_change_nothing_but_rounding(monkeypatch):
    x, w, targets = _inputs(50)
    want = _grads(linear_cross_entropy, x, w, targets)
    monkeypatch.setattr(fused_loss, "CHUNK_ROWS", 3)  # 17 slices, the last of 2 rows
    got = _grads(linear_cross_entropy, x, w, targets)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_follows_the_unfused_path():
    """Under autocast the matmuls run in bf16 as F.linear's would; the loss and the softmax in
    fp32. The gradients agree to bf16 rounding (the fused weight gradient is summed in fp32)."""
    x, w, targets = _inputs(300, vocab=211, hidden=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _grads(_unfused, x, w, targets)
        got = _grads(linear_cross_entropy, x, w, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == x.dtype and got[2].dtype == w.dtype
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1:], want[1:], strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_deterministic_and_scaled_by_the_outer_gradient():
    x, w, targets = _inputs(400)
    first = _grads(linear_cross_entropy, x, w, targets)
    again = _grads(linear_cross_entropy, x, w, targets)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    x.grad = w.grad = None
    (3.0 * linear_cross_entropy(x, w, targets)).backward()
    torch.testing.assert_close(x.grad, 3.0 * first[1])
    torch.testing.assert_close(w.grad, 3.0 * first[2])


def test_weight_slice_of_a_larger_parameter_gets_its_gradient_in_place():
    """The item loss passes a slice of the tied embedding: the gradient lands on those rows."""
    x, w, targets = _inputs(40, vocab=30)
    table = torch.nn.Parameter(torch.randn(50, 16))
    linear_cross_entropy(x, table[10:40], targets, reduction="sum").backward()
    assert table.grad[:10].abs().sum() == 0 and table.grad[40:].abs().sum() == 0
    ref = table.detach()[10:40].clone().requires_grad_()
    _unfused(x.detach(), ref, targets, reduction="sum").backward()
    torch.testing.assert_close(table.grad[10:40], ref.grad, rtol=1e-5, atol=1e-6)


def test_without_gradients_only_the_loss():
    x, w, targets = _inputs(30)
    with torch.no_grad():
        loss = linear_cross_entropy(x, w, targets)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, _unfused(x, w, targets).detach())


def test_bad_targets_and_reduction_are_refused():
    x, w, targets = _inputs(5, vocab=10)
    with pytest.raises(IndexError, match=r"0\.\.9"):
        linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3, 10]))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(x, w, targets, reduction="none")
    empty = linear_cross_entropy(x[:0], w, targets[:0], reduction="sum")
    assert float(empty.detach()) == 0.0


def test_only_the_gradients_asked_for():
    """A frozen weight (or input) gets none, and the other is still exact."""
    x, w, targets = _inputs(40)
    w.requires_grad_(False)
    linear_cross_entropy(x, w, targets).backward()
    assert w.grad is None
    got = x.grad.clone()
    w.requires_grad_(True)
    _, want, _ = _grads(_unfused, x, w, targets)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _, _, want_w = _grads(_unfused, x, w, targets)
    w.grad = None
    linear_cross_entropy(x.detach(), w, targets).backward()
    torch.testing.assert_close(w.grad, want_w, rtol=1e-5, atol=1e-6)


def test_backward_twice_with_retain_graph():
    x, w, targets = _inputs(20)
    loss = linear_cross_entropy(x, w, targets)
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * once)


@pytest.mark.parametrize("n", [1, 31, 33, 300])
def test_a_short_last_slice_is_padded_so_that_shapes_repeat(matmul_rows, n):
    """oneDNN JIT-compiles a bf16 kernel per new matmul shape: the slices' row counts come from
    a few values (multiples of PAD_ROWS up to CHUNK_ROWS), whatever n is, and the padding
    changes neither the loss nor the gradients."""
    assert fused_loss.PAD_ROWS > 1
    x, w, targets = _inputs(n)
    want = _grads(_unfused, x, w, targets)
    with matmul_rows() as rows:
        got = _grads(linear_cross_entropy, x, w, targets)
    assert rows and all(r % fused_loss.PAD_ROWS == 0 or r == w.shape[0] for r in rows)
    assert max(rows) <= max(fused_loss.CHUNK_ROWS, w.shape[0])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
