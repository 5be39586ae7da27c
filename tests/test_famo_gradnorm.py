"""FAMO (against torchjd's FAMO scalarizer, and its re-forward in the training step) and GradNorm
(closed form against a double-backward autograd reference; network gradients untouched)."""

from __future__ import annotations

import pytest
import torch
from torchjd.scalarization import FAMO as ReferenceFAMO

import methods
from harness.measure import StepTimer
from harness.trainloop import Collective, TrainStep, batchnorm_statistics_frozen
from methods import engine
from methods.famo import famo_coefficients
from methods.gradnorm import gradnorm_weight_gradient, relative_inverse_rates
from tests.test_methods_loss_level import toy_problem
from tests.toy_nets import batchnorm_net

# ============================================================================================
# FAMO
# ============================================================================================


def test_famo_registered_with_the_paper_defaults():
    m = methods.create("famo", 3)
    assert m.level == "loss"
    assert m.hyperparameters() == {"lr": 0.025, "gamma": 1e-3}
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        methods.create("famo", 3, gamma=-1)


def test_famo_first_step_weights_are_inverse_losses():
    # z uniform at start: w_t = T * (1/L_t) / sum(1/L)
    m = methods.create("famo", 3)
    w = m.weights(torch.tensor([1.0, 2.0, 4.0]))
    inverse = torch.tensor([1.0, 0.5, 0.25])
    torch.testing.assert_close(w, 3 * inverse / inverse.sum())
    assert float(w.sum()) == pytest.approx(3.0)


def test_famo_task_without_labels_gets_no_weight():
    w = famo_coefficients(
        torch.zeros(3),
        torch.tensor([1.0, 0.0, 1.0]),
        torch.zeros(3),
        torch.tensor([True, False, True]),
    )
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0, 0.5]))


@pytest.mark.parametrize("seed", [0, 1])
def test_famo_matches_torchjd_over_several_steps(seed):
    """Same model, same SGD, same batch: the model update and the logits' Adam steps agree (our
    update is torchjd's times T, so the model lr is divided by T on our side)."""
    model, make_losses = toy_problem(seed)
    ref_model, _ = toy_problem(seed)
    ours, ref = methods.create("famo", 3), ReferenceFAMO(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05 / 3)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05)
    for _ in range(25):
        opt.zero_grad()
        ref_opt.zero_grad()
        engine.backward(ours, make_losses())
        ref(make_losses(ref_model)).backward()
        opt.step()
        ref_opt.step()
        with torch.no_grad():
            ours.on_step_end(make_losses())
            ref.update(make_losses(ref_model))
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.logits.detach(), ref._w.detach(), rtol=1e-5, atol=1e-7)
    assert ours.logits.detach().abs().max() > 0.01  # the logits moved


def test_famo_needs_the_losses_after_the_step():
    m = methods.create("famo", 2)
    with pytest.raises(ValueError, match="needs the losses of the same batch"):
        m.on_step_end()
    with pytest.raises(ValueError, match="before the weights"):
        m.on_step_end(torch.ones(2))


def test_famo_state_round_trip():
    m = methods.create("famo", 3)
    for before, after in ([3.0, 2.0, 1.0], [2.0, 1.9, 0.5]), ([2.0, 1.5, 0.7], [1.0, 1.4, 0.6]):
        m.weights(torch.tensor(before))
        m.on_step_end(torch.tensor(after))
    again = methods.create("famo", 3)
    again.load_state_dict(m.state_dict())
    losses = torch.tensor([1.0, 1.0, 0.5])
    torch.testing.assert_close(again.weights(losses), m.weights(losses))
    again.on_step_end(torch.tensor([0.9, 0.8, 0.4]))
    m.on_step_end(torch.tensor([0.9, 0.8, 0.4]))
    torch.testing.assert_close(again.logits, m.logits)  # the Adam moments came along


def test_batchnorm_statistics_frozen_leaves_running_statistics_alone():
    net = batchnorm_net()
    x = torch.randn(8, 4)
    before = [b.clone() for b in net.buffers()]
    with batchnorm_statistics_frozen(net):
        frozen = net(x)[1]
    for a, b in zip(before, net.buffers(), strict=True):
        assert torch.equal(a, b)
    # the frozen forward normalised with the batch's statistics, exactly as train mode does
    torch.testing.assert_close(frozen, net(x)[1])
    assert int(net.trunk[1].num_batches_tracked) == 1  # that second forward counted
    with pytest.raises(RuntimeError), batchnorm_statistics_frozen(net):
        raise RuntimeError("interrupted")
    assert net.trunk[1].running_mean is not None  # put back even after an error


def test_train_step_reforwards_for_famo_without_touching_batchnorm():
    torch.manual_seed(0)
    net = batchnorm_net()
    method = methods.create("famo", 3)
    seen = []
    original = method.on_step_end
    method.on_step_end = lambda after=None: (seen.append(after), original(after))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    step = TrainStep(
        net, net, method, opt, collective=Collective(), timer=StepTimer(torch.device("cpu"))
    )
    x, y = torch.randn(16, 4), (torch.rand(16, 3) > 0.5).float()
    m = torch.ones(16, 3, dtype=torch.bool)
    stats_before = net.trunk[1].running_mean.clone()
    losses, weights, _ = step(x, y, m)
    stats_after_step = net.trunk[1].running_mean.clone()
    assert not torch.equal(stats_before, stats_after_step)  # the training forward counts once
    assert int(net.trunk[1].num_batches_tracked) == 1  # ... and the re-forward does not
    assert len(seen) == 1 and seen[0].shape == (3,)
    # the losses after the step, on the same batch, in train mode
    with torch.no_grad(), batchnorm_statistics_frozen(net):
        from deepchest.metrics import masked_task_losses

        expected = masked_task_losses(net(x)[1], y, m)
    torch.testing.assert_close(seen[0], expected)
    assert float(weights.sum()) == pytest.approx(3.0, rel=1e-5)


# ============================================================================================
# GradNorm
# ============================================================================================


def test_gradnorm_registered_with_the_paper_defaults():
    m = methods.create("gradnorm", 4)
    assert m.level == "last_shared_layer"
    assert m.hyperparameters() == {"alpha": 1.5, "lr": 0.025}
    assert [p.tolist() for p in m.parameters()] == [[1.0, 1.0, 1.0, 1.0]]
    assert m.optimizer_group()["lr"] == 0.025


def test_relative_inverse_rates_by_hand():
    r = relative_inverse_rates(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(r, torch.tensor([0.4, 1.6]))  # (0.5, 2) / 1.25
    # a task without labels (loss 0) or without a first loss counts as on track
    r = relative_inverse_rates(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, torch.nan]))
    torch.testing.assert_close(r, torch.ones(3))


def test_weight_gradient_by_hand():
    # w = (1, 1), n = (1, 3): G = (1, 3), mean 2; r = (1, 1): targets 2 -> sign (-1, +1) * n
    g = gradnorm_weight_gradient(torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2), 1.5)
    torch.testing.assert_close(g, torch.tensor([-1.0, 3.0]))


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_matches_double_backward_and_leaves_network_grads_alone(seed):
    """The GradNorm objective L_grad = sum_t |G_t - G*_t| with G_t = ||grad_W (w_t L_t)||
    computed with create_graph=True and differentiated w.r.t. w (the target G* detached, as in
    the paper): the same gradient as the method's closed form, and the network receives
    exactly sum_t w_t grad L_t."""
    torch.manual_seed(seed)
    net = batchnorm_net(tasks=4).double()
    twin = batchnorm_net(tasks=4).double()
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    method = methods.create("gradnorm", 4)
    with torch.no_grad():  # weights away from 1, as after some steps
        method.task_weights.copy_(torch.tensor([0.5, 1.5, 1.2, 0.8]))
    first = torch.tensor([2.0, 1.0, 3.0, 0.5], dtype=torch.float64)
    method.initial_losses = first.clone()

    losses = ((net(x)[1] - y) ** 2).mean(0)
    weights = engine.backward(method, losses, model=net)

    # reference: double backward through the gradient norms
    w = method.task_weights.detach().double().clone().requires_grad_()
    ref_losses = ((twin(x)[1] - y) ** 2).mean(0)
    layer = list(twin.last_shared_layer().parameters())
    norms = []
    for t in range(4):
        grads = torch.autograd.grad(w[t] * ref_losses[t], layer, create_graph=True)
        norms.append(torch.cat([g.flatten() for g in grads]).norm())
    g_w = torch.stack(norms)
    ratio = ref_losses.detach() / first
    target = (g_w.mean() * (ratio / ratio.mean()) ** 1.5).detach()
    (expected,) = torch.autograd.grad((g_w - target).abs().sum(), w)
    torch.testing.assert_close(method.task_weights.grad.double(), expected, rtol=1e-5, atol=1e-6)

    # the network: exactly the gradient of sum_t w_t L_t (no trace of the GradNorm objective)
    (w.detach() * ref_losses).sum().backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(weights.double(), w.detach())


def test_gradnorm_renormalises_to_sum_t_and_remembers_first_losses():
    method = methods.create("gradnorm", 3)
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    method.weights_from_jacobian(jacobian, torch.tensor([1.0, 2.0, 0.0]))
    assert method.initial_losses[:2].tolist() == [1.0, 2.0]
    assert torch.isnan(method.initial_losses[2])  # no labels yet: waits for its first loss
    with torch.no_grad():
        method.task_weights.copy_(torch.tensor([2.0, -1.0, 0.5]))  # an optimizer overshoot
    method.on_step_end()
    w = method.task_weights.detach()
    assert float(w.sum()) == pytest.approx(3.0)
    assert float(w.min()) > 0.0
    method.weights_from_jacobian(jacobian, torch.tensor([0.5, 1.0, 4.0]))
    assert method.initial_losses.tolist() == [1.0, 2.0, 4.0]


def test_gradnorm_weights_move_towards_balanced_gradient_norms():
    """Two tasks whose gradients at W differ 10x in norm and whose losses fall at the same rate:
    GradNorm's weights converge to the inverse norms (w_1 n_1 == w_2 n_2), sum 2."""
    method = methods.create("gradnorm", 2, lr=0.001)
    opt = torch.optim.SGD([method.optimizer_group()])
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    for _ in range(2000):
        opt.zero_grad()
        method.weights_from_jacobian(jacobian, torch.tensor([1.0, 1.0]))
        opt.step()
        method.on_step_end()
    w = method.task_weights.detach()
    # the sign-gradient steps keep it oscillating by about one step (0.01) around 2/11
    assert float(w[0] * 1.0) == pytest.approx(float(w[1] * 10.0), rel=0.1)
    assert float(w.sum()) == pytest.approx(2.0)


def test_gradnorm_state_round_trip():
    method = methods.create("gradnorm", 2)
    method.weights_from_jacobian(torch.eye(2), torch.tensor([1.0, 3.0]))
    with torch.no_grad():
        method.task_weights.copy_(torch.tensor([0.7, 1.3]))
    again = methods.create("gradnorm", 2)
    again.load_state_dict(method.state_dict())
    assert again.task_weights.tolist() == pytest.approx([0.7, 1.3])
    assert again.initial_losses.tolist() == [1.0, 3.0]


def test_gradnorm_weight_gradient_carries_the_loss_scale():
    """Under fp16 the GradScaler divides every gradient of the optimizer by the scale, the
    method's weights included: their gradient must carry the scale like the network's."""
    grads = []
    for scale in (None, lambda t: t * 1024):
        torch.manual_seed(0)
        net = batchnorm_net(tasks=3).double()
        x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
        method = methods.create("gradnorm", 3)
        losses = ((net(x)[1] - y) ** 2).mean(0)
        engine.backward(method, losses, model=net, scale=scale)
        grads.append(method.task_weights.grad.clone())
    torch.testing.assert_close(grads[1], 1024 * grads[0])


#: GradNorm's ``W`` (``MultiTaskNet.last_shared_layer()``) per backbone, as the table in
#: docs/methods.md ("gradnorm") states it: (module path in the trunk, type, parameter count)
LAST_SHARED_LAYER = {
    "simple_cnn": ("features.13", "BatchNorm2d", 256),
    "resnet18": ("layer4.1.bn2", "BatchNorm2d", 1024),
    "resnet34": ("layer4.2.bn2", "BatchNorm2d", 1024),
    "resnet50": ("layer4.2.bn3", "BatchNorm2d", 4096),
    "densenet121": ("features.norm5", "BatchNorm2d", 2048),
    "efficientnet_b0": ("features.8.1", "BatchNorm2d", 2560),
    "mobilenet_v3_small": ("classifier.0", "Linear", 590848),
    "convnext_tiny": ("classifier.0", "LayerNorm2d", 1536),
}


def test_gradnorm_last_shared_layer_per_backbone_is_the_documented_one():
    """Every backbone is built as the loop builds it (CPU, one channel; about 2 s in all) and
    its ``W`` compared with the dict above, whose rows must also be docs/methods.md's table."""
    from pathlib import Path

    from deepchest.models import BACKBONES, MultiTaskNet

    assert set(LAST_SHARED_LAYER) == set(BACKBONES)
    built = {}
    for backbone in sorted(BACKBONES):
        net = MultiTaskNet(backbone, num_tasks=3)
        layer = net.last_shared_layer()
        path = next(name for name, module in net.trunk.named_modules() if module is layer)
        count = sum(p.numel() for p in layer.parameters())
        built[backbone] = (path, type(layer).__name__, count)
    assert built == LAST_SHARED_LAYER
    docs = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    for backbone, (path, kind, count) in LAST_SHARED_LAYER.items():
        row = f"| `{backbone}` | `{path}` | `{kind}` | {count:,} |"
        assert row in docs, f"docs/methods.md's GradNorm table lacks the row {row!r}"
