"""The engine's gradient-level path (level "parameters") against torchjd's mtl_backward."""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import Mean
from torchjd.autojac import jac_to_grad, mtl_backward

from methods import engine
from methods.base import Method
from tests.toy_nets import tanh_net


class MeanOfRows(Method):
    """Test aggregator: ``d = mean_t g_t``, weights ``1/T`` (torchjd's ``Mean``)."""

    name = "mean_of_rows"
    level = "parameters"
    summary = "test only"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.seen: list[torch.Tensor] = []

    def aggregate(self, jacobian, losses, *, present=None):
        self.seen.append(jacobian.clone())
        return jacobian.mean(0), torch.full((self.num_tasks,), 1 / self.num_tasks)


def losses_of(net, x, y):
    rep, logits = net(x)
    return rep, ((logits - y) ** 2).mean(0)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)


def twins():
    torch.manual_seed(1)
    a = tanh_net().double()
    b = tanh_net().double()
    b.load_state_dict(a.state_dict())
    return a, b


def test_matches_torchjd_mtl_backward_with_the_same_aggregator(batch):
    x, y = batch
    ours, ref = twins()
    _, losses = losses_of(ours, x, y)
    weights = engine.backward(MeanOfRows(3), losses, model=ours, heads="own")
    assert torch.allclose(weights, torch.full((3,), 1 / 3, dtype=torch.float32))

    rep = ref.trunk(x)
    # torchjd differentiates each loss on its own: each task's loss from its own head
    ref_losses = [((ref.heads[t](rep)[:, 0] - y[:, t]) ** 2).mean() for t in range(3)]
    mtl_backward(
        ref_losses,
        features=rep,
        tasks_params=[list(ref.task_parameters(t)) for t in range(3)],
        shared_params=list(ref.shared_parameters()),
    )
    jac_to_grad(list(ref.shared_parameters()), Mean())
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-12), (p.shape, (p.grad - q.grad).abs().max())


def test_jacobian_rows_are_per_task_gradients(batch):
    x, y = batch
    net, _ = twins()
    _, losses = losses_of(net, x, y)
    params = list(net.shared_parameters())
    jac = engine.shared_jacobian(losses, params)
    assert torch.allclose(jac, engine.shared_jacobian(losses, params, batched=False))
    for t in range(3):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True)
        assert torch.allclose(jac[t], torch.cat([g.flatten() for g in grads]))


def test_weighted_heads_get_their_weight_times_their_gradient(batch):
    x, y = batch
    net, ref = twins()

    class Fixed(MeanOfRows):
        def aggregate(self, jacobian, losses, *, present=None):
            return jacobian.sum(0), torch.tensor([0.5, 2.0, 1.0], dtype=jacobian.dtype)

    _, losses = losses_of(net, x, y)
    engine.backward(Fixed(3), losses, model=net, heads="weighted")
    _, ref_losses = losses_of(ref, x, y)
    (torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64) * ref_losses).sum().backward()
    for t in range(3):
        for p, q in zip(net.task_parameters(t), ref.task_parameters(t), strict=True):
            assert torch.allclose(p.grad, q.grad)
    # the shared gradient is the aggregator's (here the plain sum), not the weighted one
    _, ref_losses = losses_of(ref, x, y)
    ref.zero_grad()
    ref_losses.sum().backward()
    for p, q in zip(net.shared_parameters(), ref.shared_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad)


def test_loss_scaling_is_divided_out_of_the_jacobian(batch):
    x, y = batch
    plain, scaled = twins()
    m_plain, m_scaled = MeanOfRows(3), MeanOfRows(3)
    engine.backward(m_plain, losses_of(plain, x, y)[1], model=plain)
    engine.backward(m_scaled, losses_of(scaled, x, y)[1], model=scaled, scale=lambda t: t * 1024)
    assert torch.allclose(m_plain.seen[0], m_scaled.seen[0])  # the method sees unscaled J
    for p, q in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.allclose(p.grad * 1024, q.grad)  # .grad carries the scale, as GradScaler


def test_errors():
    net = tanh_net()
    losses = losses_of(net, torch.randn(4, 5), torch.randn(4, 3))[1]
    with pytest.raises(ValueError, match="needs the model"):
        engine.backward(MeanOfRows(3), losses)
    with pytest.raises(ValueError, match="heads must be"):
        engine.backward(MeanOfRows(3), losses, model=net, heads="mine")


def test_jacobian_falls_back_to_per_task_passes_and_remembers(batch, monkeypatch):
    """Where the vmapped pass raises (an op without a batching rule), the rows come from T
    passes, and the next call for the same parameters does not try the vmapped pass again."""
    x, y = batch
    net, _ = twins()
    params = list(net.shared_parameters())
    real_grad = torch.autograd.grad
    batched_tries = []

    def no_batching_rule(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            batched_tries.append(1)
            raise RuntimeError("Batching rule not implemented for aten::some_op")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching_rule)
    for _ in range(2):
        _, losses = losses_of(net, x, y)
        jac = engine.shared_jacobian(losses, params, batched=True)
        expected = torch.stack(
            [
                torch.cat([g.flatten() for g in real_grad(losses[t], params, retain_graph=True)])
                for t in range(3)
            ]
        )
        torch.testing.assert_close(jac, expected)
    assert len(batched_tries) == 1


def test_a_freed_parameter_takes_its_no_batching_memo_with_it():
    p = torch.nn.Parameter(torch.ones(3))
    engine._remember_no_batching_rule(p)
    key = id(p)
    assert engine._NO_BATCHING_RULE[key] == engine._SKIP_BATCHED_CALLS
    del p
    import gc

    gc.collect()
    assert key not in engine._NO_BATCHING_RULE
