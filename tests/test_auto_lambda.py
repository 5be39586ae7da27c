"""Auto-Lambda: its Adam step against torch's, its look-ahead hypergradient against the exact
derivative by autograd through the look-ahead step, the masked-task rule, and a real trial that
reads validation batches, never the test split.

Derivation (the exact reference): ``theta'(lambda) = theta - lr (sum_t lambda_t g_t + wd theta
+ m)`` with ``g_t = grad L_t(theta)``, so ``dL_val(theta')/dlambda_t = -lr g_t . grad
L_val(theta')``. Autograd gives it directly when ``lambda`` requires grad and ``theta'`` is built
from it (``create_graph``); the engine's central differences must agree to O(e^2).
"""

from __future__ import annotations

import pytest
import torch

import methods
from harness.trainloop import MemoryReporter, train_trial
from methods import engine
from methods.auto_lambda import adam_step
from tests.test_trainloop import spec_for
from tests.toy_nets import tanh_net

F64 = torch.float64


def test_adam_step_is_torch_adam_when_every_task_is_active():
    g = torch.Generator().manual_seed(0)
    ours = torch.full((4,), 0.1, dtype=F64)
    m, v, k = torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)
    ref = torch.nn.Parameter(ours.clone())
    opt = torch.optim.Adam([ref], lr=1e-2)
    for _ in range(6):
        grad = torch.randn(4, generator=g, dtype=F64)
        ours, m, v, k = adam_step(ours, grad, m, v, k, lr=1e-2, active=torch.ones(4, dtype=bool))
        ref.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-15)


def test_adam_step_leaves_an_inactive_entry_and_its_count_alone():
    """Entry 1 inactive in the 2nd step: it keeps value, moments and count; the others are as
    Adam on them alone."""
    p, m, v, k = torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3)
    all_on = torch.ones(3, dtype=bool)
    p, m, v, k = adam_step(p, torch.tensor([1.0, 2.0, 3.0]), m, v, k, lr=0.1, active=all_on)
    before = (p.clone(), m.clone(), v.clone(), k.clone())
    active = torch.tensor([True, False, True])
    p2, m2, v2, k2 = adam_step(p, torch.tensor([1.0, 0.0, -1.0]), m, v, k, lr=0.1, active=active)
    for new, old in zip((p2, m2, v2, k2), before, strict=True):
        assert new[1] == old[1]
    assert k2.tolist() == [2.0, 1.0, 2.0]
    alone = adam_step(
        before[0][[0, 2]],
        torch.tensor([1.0, -1.0]),
        before[1][[0, 2]],
        before[2][[0, 2]],
        before[3][[0, 2]],
        lr=0.1,
        active=torch.ones(2, dtype=bool),
    )
    assert torch.equal(p2[[0, 2]], alone[0])


def losses_at(net, params, x, y):
    _, logits = torch.func.functional_call(net, params, (x,))
    return ((logits - y) ** 2).mean(0)


@pytest.mark.parametrize(("weight_decay", "with_momentum"), [(0.0, False), (0.01, True)])
def test_hypergradient_matches_the_exact_derivative_through_the_lookahead(
    weight_decay, with_momentum
):
    torch.manual_seed(0)
    net = tanh_net().double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 5, generator=g, dtype=F64), torch.randn(12, 3, generator=g, dtype=F64)
    xv, yv = torch.randn(10, 5, generator=g, dtype=F64), torch.randn(10, 3, generator=g, dtype=F64)
    lam = torch.tensor([0.3, 1.2, 0.7], dtype=F64)
    lr = 0.05
    params = dict(net.named_parameters())
    momentum = (
        {n: 0.1 * torch.randn(p.shape, generator=g, dtype=F64) for n, p in params.items()}
        if with_momentum
        else None
    )
    _, logits = net(x)
    losses = ((logits - y) ** 2).mean(0)
    ours = engine.lookahead_hypergradient(
        net,
        losses,
        lam,
        train_losses=lambda p: losses_at(net, p, x, y),
        val_losses=lambda p: losses_at(net, p, xv, yv),
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
    )
    # exact: lambda requires grad, theta' is a differentiable function of it
    lam_var = lam.clone().requires_grad_()
    train = losses_at(net, params, x, y)
    grads = torch.autograd.grad((lam_var * train).sum(), list(params.values()), create_graph=True)
    ahead = {
        n: p - lr * ((momentum[n] if momentum else 0.0) + gr + weight_decay * p)
        for (n, p), gr in zip(params.items(), grads, strict=True)
    }
    (exact,) = torch.autograd.grad(losses_at(net, ahead, xv, yv).sum(), lam_var)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), exact, rtol=2e-4, atol=1e-7)
    assert bool((exact.abs() > 1e-5).all())  # a real signal, not zeros on both sides


def test_a_non_finite_lookahead_skips_the_meta_step():
    """A validation loss that overflows gives a NaN hypergradient, and the meta step leaves
    lambda, its moments and counts as they were (a zero hypergradient would still move them
    on Adam's momentum)."""
    torch.manual_seed(0)
    net = tanh_net().double()
    x, y = torch.randn(6, 5, dtype=F64), torch.randn(6, 3, dtype=F64)
    _, logits = net(x)
    losses = ((logits - y) ** 2).mean(0)
    hyper = engine.lookahead_hypergradient(
        net,
        losses,
        torch.ones(3),
        train_losses=lambda p: losses_at(net, p, x, y),
        val_losses=lambda p: losses_at(net, p, x, y) * torch.inf,
        lr=0.1,
    )
    assert torch.isnan(hyper).all()
    method = methods.create("auto_lambda", 3, lr=0.01)
    method.meta_step(torch.tensor([1.0, -1.0, 0.5]))
    before = method.state_dict()["state"]
    method.meta_step(hyper)
    after = method.state_dict()["state"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_step_hands_sgd_momentum_to_the_lookahead_by_parameter_name(monkeypatch):
    """theta' = theta - lr (m + g + wd theta) with m = momentum x SGD's buffer of that very
    parameter; Adam gives no m (the reference code's virtual step)."""
    from harness import trainloop
    from harness.measure import StepTimer
    from harness.trainloop import Collective, TrainStep

    seen = []
    real = trainloop.engine.lookahead_hypergradient

    def spy(*args, **kwargs):
        seen.append(kwargs["momentum"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainloop.engine, "lookahead_hypergradient", spy)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), (torch.rand(8, 3, generator=g) < 0.5).float()
    m = torch.ones(8, 3, dtype=torch.bool)
    for optimizer in ("sgd", "adam"):
        torch.manual_seed(0)
        net = tanh_net()
        opt = (
            torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.Adam(net.parameters(), lr=0.1)
        )
        step = TrainStep(
            net,
            net,
            methods.create("auto_lambda", 3),
            opt,
            collective=Collective(),
            timer=StepTimer(torch.device("cpu")),
            validation_batch=lambda: (x, y, m),
        )
        step(x, y, m)
        names = dict(net.named_parameters())
        buffers = {
            n: opt.state[p].get("momentum_buffer", torch.zeros(0)).clone() for n, p in names.items()
        }
        step(x, y, m)
        if optimizer == "sgd":
            assert seen[0] == {}  # no buffer before the first step
            assert seen[1].keys() == names.keys()
            for name, term in seen[1].items():  # the buffer as it was before this step
                torch.testing.assert_close(term, 0.9 * buffers[name], rtol=0, atol=0)
        else:
            assert seen[2] == {} and seen[3] == {}


def test_meta_step_moves_present_tasks_only():
    m = methods.create("auto_lambda", 3, lr=0.01)
    m.meta_step(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([True, False, True]))
    w = m.weights(torch.ones(3))
    # Adam's first step moves by lr against the gradient's sign
    torch.testing.assert_close(w, torch.tensor([0.09, 0.1, 0.09]))


def test_checkpoint_round_trip_continues_bit_identically():
    a = methods.create("auto_lambda", 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a.meta_step(torch.randn(3, generator=g), torch.ones(3, dtype=bool))
    b = methods.create("auto_lambda", 3)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        h = torch.randn(3, generator=g)
        a.meta_step(h, torch.tensor([True, False, True]))
        b.meta_step(h, torch.tensor([True, False, True]))
    assert torch.equal(a.weights(torch.ones(3)), b.weights(torch.ones(3)))


@pytest.mark.parametrize(("hp", "match"), [({"lr": 0}, "lr"), ({"initial_weight": -1}, "initial")])
def test_bad_hyperparameters(hp, match):
    with pytest.raises(ValueError, match=rf"^method 'auto_lambda': {match}"):
        methods.create("auto_lambda", 3, **hp)


def test_trial_learns_the_weights_from_validation_batches_never_the_test_split(
    tmp_path, monkeypatch
):
    """A real (tiny) trial: the weights leave their initial 0.1, and every look-ahead batch is
    a batch of the validation split: its labels are set to all 0 here, the training and test
    splits' to all 1, so a batch from any other split would show a 1."""
    from deepchest.data import LabeledImages
    from harness import trainloop

    real_splits = trainloop.load_splits

    def marked(data):
        return {
            split: LabeledImages(
                d.images,
                torch.full_like(d.labels, 0.0 if split == "val" else 1.0),
                d.mask,
                d.task_names,
            )
            for split, d in real_splits(data).items()
        }

    seen: list[torch.Tensor] = []  # the labels of every look-ahead validation loss
    looking_ahead = []
    real_lookahead = trainloop.engine.lookahead_hypergradient
    real_losses = trainloop.masked_task_losses

    def spy(*args, val_losses, **kwargs):
        def recording(params):
            looking_ahead.append(True)
            try:
                return val_losses(params)
            finally:
                looking_ahead.pop()

        return real_lookahead(*args, val_losses=recording, **kwargs)

    def losses(logits, y, m):
        if looking_ahead:
            seen.append(y.detach().clone())
        return real_losses(logits, y, m)

    monkeypatch.setattr(trainloop, "masked_task_losses", losses)
    monkeypatch.setattr(trainloop, "load_splits", marked)
    monkeypatch.setattr(trainloop.engine, "lookahead_hypergradient", spy)
    spec = spec_for(tmp_path, method="auto_lambda", epochs=1)
    spec["method_params"] = {"lr": 0.05}
    out = train_trial(spec, MemoryReporter())
    assert out["status"] == "completed", out.get("error")
    weights = [r["weight"] for r in out["rows"] if r["split"] == "train"]
    assert weights and all(w != pytest.approx(0.1, abs=1e-6) for w in weights)
    assert seen  # one validation batch per training step
    for labels in seen:  # only the validation split's labels are 0
        assert not labels.any()
