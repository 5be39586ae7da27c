"""Tests of the loss-level methods uncertainty, dwa and rlw (hand-derived values, the independent
reference torchjd 0.18.0, properties, registry, checkpointing) and of the objective/parameter API.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torchjd.scalarization import DWA, UW, Random

import methods
from methods import engine

LN2 = math.log(2.0)


def stats(train_loss) -> methods.EpochStats:
    """EpochStats with the given epoch-averaged train losses (accuracies unused: zeros)."""
    loss = torch.as_tensor(train_loss, dtype=torch.float32)
    return methods.EpochStats(train_accuracy=torch.zeros_like(loss), train_loss=loss)


def objective(method, losses):
    """The method's objective as the engine builds it, with ``reduce`` = identity."""
    detached = losses.detach().clone()
    return method.objective(losses, reduced=detached, weights=method.weights(detached))


def toy_problem(seed=0, num_tasks=3):
    """A tiny shared-trunk model and a closure computing its per-task losses (with grad)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, num_tasks)
    )
    x = torch.randn(16, 4)
    y = torch.randn(16, num_tasks) * torch.arange(1, num_tasks + 1)  # different loss scales

    def make_losses(m=model):
        return ((m(x) - y) ** 2).mean(dim=0)

    return model, make_losses


# ============================================================================================
# Registry, hyperparameters, API defaults
# ============================================================================================


def test_registered_and_described():
    assert {"uncertainty", "dwa", "rlw"} <= set(methods.available())
    by_name = {i.name: i for i in methods.describe()}
    assert by_name["uncertainty"].hyperparameters == {"lr": 0.025}
    assert by_name["dwa"].hyperparameters == {"temperature": 2.0}
    assert by_name["rlw"].hyperparameters == {}
    for name in ("uncertainty", "dwa", "rlw"):
        info = by_name[name]
        assert info.level == "loss" and info.summary and "\n" not in info.summary
        assert isinstance(methods.create(name, 3), methods.LossWeighting)


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("uncertainty", {"alpha": 1}, "unknown hyperparameter 'alpha'; valid: lr"),
        ("dwa", {"lr": 1}, "unknown hyperparameter 'lr'; valid: temperature"),
        ("rlw", {"temperature": 1}, "unknown hyperparameter 'temperature'; valid: (none)"),
        ("uncertainty", {"lr": 0}, "lr must be a finite number > 0, got 0"),
        ("uncertainty", {"lr": "0.1"}, "lr must be a finite number > 0, got '0.1'"),
        ("dwa", {"temperature": -1.0}, "temperature must be a finite number > 0, got -1.0"),
        ("dwa", {"temperature": math.inf}, "temperature must be a finite number > 0, got inf"),
    ],
)
def test_bad_hyperparameters(name, hp, message):
    with pytest.raises(ValueError) as exc:
        methods.create(name, num_tasks=3, **hp)
    assert str(exc.value) == f"method {name!r}: {message}"


def test_hyperparameters_resolved():
    assert methods.create("uncertainty", 2, lr=1).hyperparameters() == {"lr": 1.0}
    assert methods.create("dwa", 2, temperature=3).hyperparameters() == {"temperature": 3.0}


@pytest.mark.parametrize("name", ["equal", "deepchest", "dwa", "rlw"])
def test_methods_without_parameters(name):
    m = methods.create(name, 3)
    assert m.parameters() == []
    assert m.optimizer_group() is None
    assert m.to("cpu") is m


def test_uncertainty_parameters_and_group():
    m = methods.create("uncertainty", 3, lr=0.1)
    (s,) = m.parameters()
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad
    assert torch.equal(s.detach(), torch.zeros(3))  # s = log sigma^2 initialised to 0
    group = m.optimizer_group()
    assert group == {"params": [s], "lr": 0.1, "weight_decay": 0.0}
    assert m.to("cpu") is m and m.parameters()[0] is s  # moved in place, same Parameter
    # The group is accepted by a torch optimizer next to the model's parameters.
    model = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD([{"params": model.parameters()}, group], lr=1.0, weight_decay=0.5)
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


def test_uncertainty_device_mismatch_is_explained():
    m = methods.create("uncertainty", 2)
    m.log_var = torch.nn.Parameter(torch.zeros(2, device="meta"))  # as if moved elsewhere
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"call method.to\(device\)"):
        engine.backward(m, losses)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uncertainty_to_cuda_keeps_parameter_and_trains():
    m = methods.create("uncertainty", 2)
    (s,) = m.parameters()
    assert m.to("cuda") is m and m.parameters()[0] is s and s.device.type == "cuda"
    opt = torch.optim.Adam([m.optimizer_group()])
    losses = torch.tensor([1.0, 3.0], device="cuda", requires_grad=True)
    w = engine.backward(m, losses)
    assert w.device.type == "cuda" and w.tolist() == [0.5, 0.5]
    assert s.grad.tolist() == pytest.approx([0.0, -1.0])
    opt.step()
    assert s.detach().cpu().tolist() == pytest.approx([0.0, 0.025], abs=1e-6)  # Adam: lr * sign
    state = m.state_dict()["state"]["log_var"]
    assert state.device.type == "cpu"
    m2 = methods.create("uncertainty", 2).to("cuda")
    m2.load_state_dict(m.state_dict())
    assert m2.parameters()[0].device.type == "cuda"


# ============================================================================================
# Uncertainty: hand-derived
# ============================================================================================


def test_uncertainty_objective_and_gradient_by_hand():
    m = methods.create("uncertainty", 2)
    m.load_state_dict(
        {"method": "uncertainty", "num_tasks": 2, "state": {"log_var": torch.tensor([LN2, -LN2])}}
    )
    losses = torch.tensor([3.0, 0.25], requires_grad=True)
    # s = [ln 2, -ln 2] -> exp(-s) = [1/2, 2]; weights 0.5 exp(-s) = [0.25, 1.0]
    # objective = 0.5*0.5*3 + 0.5 ln2 + 0.5*2*0.25 - 0.5 ln2 = 0.75 + 0.25 = 1.0
    # d/ds_t = -0.5 exp(-s_t) L_t + 0.5 = [-0.75 + 0.5, -0.25 + 0.5] = [-0.25, 0.25]
    # d/dL_t = 0.5 exp(-s_t) = the weights [0.25, 1.0]
    assert objective(m, losses).item() == pytest.approx(1.0, abs=1e-6)
    w = engine.backward(m, losses)
    assert w.tolist() == pytest.approx([0.25, 1.0], abs=1e-6)
    assert w.dtype == torch.float32 and not w.requires_grad
    assert m.parameters()[0].grad.tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)
    assert losses.grad.tolist() == pytest.approx([0.25, 1.0], abs=1e-6)


def test_uncertainty_initial_state_by_hand():
    m = methods.create("uncertainty", 3)
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    # s = 0: objective = 0.5 * (1 + 2 + 4) = 3.5; d/ds = 0.5 - 0.5 L = [0, -0.5, -1.5]
    assert objective(m, losses).item() == pytest.approx(3.5)
    assert engine.backward(m, losses).tolist() == [0.5, 0.5, 0.5]
    assert m.parameters()[0].grad.tolist() == pytest.approx([0.0, -0.5, -1.5])


def test_uncertainty_s_gradient_uses_reduced_losses_model_gradient_local_ones():
    # Under DDP ``reduce`` all-reduces the losses; s must get the same gradient on every worker
    # (from the reduced losses) while the model gets this worker's gradient (DDP averages it).
    m = methods.create("uncertainty", 2)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    engine.backward(m, losses, reduce=lambda t: t * 2)  # "reduced" losses [2, 6]
    # d/ds = 0.5 - 0.5 * [2, 6] = [-0.5, -2.5]; d/dL = 0.5 exp(-0) = 0.5 (local losses)
    assert m.parameters()[0].grad.tolist() == pytest.approx([-0.5, -2.5])
    assert losses.grad.tolist() == pytest.approx([0.5, 0.5])


def test_uncertainty_engine_applies_scale():
    m = methods.create("uncertainty", 2)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    w = engine.backward(m, losses, scale=lambda o: o * 4)
    assert w.tolist() == [0.5, 0.5]  # unscaled
    assert m.parameters()[0].grad.tolist() == pytest.approx([0.0, -4.0])  # 4 * (0.5 - 0.5 L)


# ============================================================================================
# Uncertainty: against torchjd.scalarization.UW
# ============================================================================================


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_uncertainty_matches_torchjd_uw(opt):
    # Both sides: the same model init, s in its own group (lr 0.025, no weight decay), the model
    # with weight decay; same steps. torchjd's UW also inits s to 0 and uses the same formula.
    model, make_losses = toy_problem(seed=1)
    ref_model, _ = toy_problem(seed=1)
    ours = methods.create("uncertainty", 3)
    ref = UW(3)

    def make_opt(params, group):
        cls = torch.optim.SGD if opt == "sgd" else torch.optim.Adam
        return cls([{"params": params}, group], lr=0.05, weight_decay=1e-3)

    opt_ours = make_opt(model.parameters(), ours.optimizer_group())
    opt_ref = make_opt(
        ref_model.parameters(), {"params": ref.parameters(), "lr": 0.025, "weight_decay": 0.0}
    )
    for _ in range(30):
        opt_ours.zero_grad()
        opt_ref.zero_grad()
        losses = make_losses(model)
        value = objective(ours, losses).item()
        engine.backward(ours, losses)
        ref_value = ref(make_losses(ref_model))
        ref_value.backward()
        assert value == pytest.approx(ref_value.item(), rel=1e-5, abs=1e-6)
        opt_ours.step()
        opt_ref.step()
        ours.on_step_end()
        torch.testing.assert_close(ours.parameters()[0].detach(), ref.log_var.detach())
    # s actually moved (the tasks have different loss scales)
    assert ours.parameters()[0].detach().abs().max() > 0.1


# ============================================================================================
# Uncertainty: properties
# ============================================================================================


def _train_s_alone(method, losses, steps):
    """Adam (the group's lr, 0.025 by default) on s alone, for fixed losses."""
    opt = torch.optim.Adam([method.optimizer_group()])
    for _ in range(steps):
        opt.zero_grad()
        engine.backward(method, losses.clone().requires_grad_())
        opt.step()
        method.on_step_end()


def test_uncertainty_weights_approach_one_over_two_l():
    # Stationary point: d/ds = 0.5 - 0.5 exp(-s) L = 0  ->  exp(-s) = 1/L, weight = 1 / (2 L).
    losses = torch.tensor([0.2, 1.0, 3.0, 0.05])
    m = methods.create("uncertainty", 4)
    _train_s_alone(m, losses, 1500)
    w = m.weights(losses)
    torch.testing.assert_close(w, 1 / (2 * losses), rtol=2e-2, atol=0.0)


@pytest.mark.parametrize("seed", range(5))
def test_uncertainty_is_permutation_equivariant(seed):
    rng = random.Random(seed)
    num_tasks = rng.randint(2, 6)
    losses = torch.tensor([rng.uniform(0.05, 3.0) for _ in range(num_tasks)])
    perm = list(range(num_tasks))
    rng.shuffle(perm)
    plain = methods.create("uncertainty", num_tasks)
    permuted = methods.create("uncertainty", num_tasks)
    _train_s_alone(plain, losses, 50)
    _train_s_alone(permuted, losses[perm], 50)
    torch.testing.assert_close(permuted.weights(losses), plain.weights(losses)[perm])


# ============================================================================================
# DWA: hand-derived
# ============================================================================================


def test_dwa_by_hand():
    m = methods.create("dwa", 3)  # temperature 2
    ones = [1.0, 1.0, 1.0]
    assert m.weights(torch.zeros(3)).tolist() == ones  # epoch 1: uniform
    m.on_epoch_end(stats([1.0, 2.0, 4.0]))
    assert m.weights(torch.zeros(3)).tolist() == ones  # epoch 2: uniform (one average only)
    m.on_epoch_end(stats([0.5, 2.0, 6.0]))
    # epoch 3: r = [0.5/1, 2/2, 6/4] = [0.5, 1, 1.5]; r/2 = [0.25, 0.5, 0.75]
    # exp = [1.284025, 1.648721, 2.117000], sum 5.049747
    # w = 3 * exp / sum = [0.762826, 0.979488, 1.257687]
    w = m.weights(torch.zeros(3))
    assert w.tolist() == pytest.approx([0.762826, 0.979488, 1.257687], abs=1e-6)
    assert w.sum().item() == pytest.approx(3.0, abs=1e-6)
    m.on_epoch_end(stats([0.25, 1.0, 6.0]))
    # epoch 4: r = [0.25/0.5, 1/2, 6/6] = [0.5, 0.5, 1]; exp(r/2) = [1.284025, 1.284025, 1.648721]
    # sum 4.216772; w = [0.913513, 0.913513, 1.172974]
    w = m.weights(torch.zeros(3))
    assert w.tolist() == pytest.approx([0.913513, 0.913513, 1.172974], abs=1e-6)
    assert w.sum().item() == pytest.approx(3.0, abs=1e-6)
    # The weights are constant within an epoch, whatever the step losses.
    assert m.weights(torch.tensor([9.0, 0.0, 1.0])).tolist() == w.tolist()


def test_dwa_temperature_and_equal_rates():
    # Equal rates -> uniform weights 1 whatever the temperature.
    m = methods.create("dwa", 2, temperature=0.5)
    m.on_epoch_end(stats([1.0, 4.0]))
    m.on_epoch_end(stats([0.5, 2.0]))
    assert m.weights(torch.zeros(2)).tolist() == pytest.approx([1.0, 1.0])
    # r = [1, 0.5]/... : epoch losses [0.5, 1.0] after [0.5, 2.0] -> r = [1, 0.5]
    # temperature 0.5: r/T = [2, 1]; w = 2 * [e^2, e] / (e^2 + e) = [1.462117, 0.537883]
    m.on_epoch_end(stats([0.5, 1.0]))
    assert m.weights(torch.zeros(2)).tolist() == pytest.approx([1.462117, 0.537883], abs=1e-6)


def test_dwa_non_finite_ratio_counts_as_one():
    m = methods.create("dwa", 3)
    m.on_epoch_end(stats([0.0, 1.0, math.nan]))
    m.on_epoch_end(stats([0.0, 1.0, 1.0]))  # ratios 0/0 = NaN, 1, NaN -> all 1 -> uniform
    assert m.weights(torch.zeros(3)).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_dwa_checks_train_loss_length():
    with pytest.raises(ValueError, match=r"train_loss has shape \(2,\), expected \(3,\)"):
        methods.create("dwa", 3).on_epoch_end(stats([1.0, 1.0]))


# ============================================================================================
# DWA: against torchjd.scalarization.DWA
# ============================================================================================


def test_dwa_matches_torchjd_dwa():
    # torchjd's DWA averages the step losses it is called with and rolls its history in
    # ``step()``; ours reads the epoch average from EpochStats.train_loss (which the loop computes
    # as the mean of the step losses). Same convention otherwise: uniform for two epochs, sum T.
    gen = torch.Generator().manual_seed(3)
    ours = methods.create("dwa", 4, temperature=2.0)
    ref = DWA(temperature=2.0)
    scales = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for epoch in range(6):
        step_losses = []
        for _ in range(5):
            decay = torch.rand(4, generator=gen) * 0.3 + 0.7
            losses = scales * decay**epoch * (1 + 0.1 * torch.rand(4, generator=gen))
            losses.requires_grad_()
            step_losses.append(losses.detach())
            ours_value = objective(ours, losses)
            ref_value = ref(losses)
            assert ours_value.item() == pytest.approx(ref_value.item(), rel=1e-6)
            # Same gradient w.r.t. the losses, i.e. the same weights.
            g_ours = torch.autograd.grad(ours_value, losses)[0]
            g_ref = torch.autograd.grad(ref_value, losses)[0]
            torch.testing.assert_close(g_ours, g_ref)
        ref.step()
        ours.on_epoch_end(stats(torch.stack(step_losses).mean(dim=0)))


# ============================================================================================
# DWA: properties
# ============================================================================================


@pytest.mark.parametrize("seed", range(10))
def test_dwa_is_permutation_equivariant_and_sums_to_t(seed):
    rng = random.Random(seed)
    num_tasks = rng.randint(2, 8)
    temperature = rng.choice([0.5, 2.0, 5.0])
    epochs = [[rng.uniform(0.1, 2.0) for _ in range(num_tasks)] for _ in range(5)]
    perm = list(range(num_tasks))
    rng.shuffle(perm)
    plain = methods.create("dwa", num_tasks, temperature=temperature)
    permuted = methods.create("dwa", num_tasks, temperature=temperature)
    for e in epochs:
        plain.on_epoch_end(stats(e))
        permuted.on_epoch_end(stats([e[p] for p in perm]))
        w = plain.weights(torch.zeros(num_tasks))
        assert (w > 0).all()
        assert w.sum().item() == pytest.approx(num_tasks, rel=1e-6)
        torch.testing.assert_close(permuted.weights(torch.zeros(num_tasks)), w[perm])


# ============================================================================================
# RLW
# ============================================================================================


def test_rlw_weights_positive_sum_t_and_reproducible():
    m = methods.create("rlw", 5)
    torch.manual_seed(123)
    first = [m.weights(torch.zeros(5)) for _ in range(20)]
    torch.manual_seed(123)
    second = [m.weights(torch.zeros(5)) for _ in range(20)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
        assert (a > 0).all()
        assert a.sum().item() == pytest.approx(5.0, rel=1e-6)  # convention: sum T
        assert a.dtype == torch.float32
    assert not torch.equal(first[0], first[1])  # a fresh draw every step


def test_rlw_one_draw_per_engine_step():
    # The engine computes the weights once per step and the objective reuses them.
    model, make_losses = toy_problem(seed=2)
    m = methods.create("rlw", 3)
    torch.manual_seed(7)
    w = engine.backward(m, make_losses())
    torch.manual_seed(7)
    expected = 3 * torch.softmax(torch.randn(3), dim=0)
    assert torch.equal(w, expected)
    got = [p.grad.clone() for p in model.parameters()]
    want = torch.autograd.grad((expected * make_losses()).sum(), list(model.parameters()))
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e)


def test_rlw_matches_torchjd_random_up_to_scale():
    # torchjd's Random draws torch.randn(T) (float32 CPU for float32 CPU losses) from the global
    # RNG, as ours does, and returns sum_t softmax(z)_t L_t (sum 1). Ours is scaled to sum T:
    # w_ours = T * w_torchjd, so under the same seed the weights agree after that transform.
    ref = Random()
    m = methods.create("rlw", 4)
    losses = torch.tensor([0.3, 1.2, 0.7, 2.0])
    torch.manual_seed(11)
    ours = [m.weights(losses) for _ in range(10)]
    torch.manual_seed(11)
    for w in ours:
        leaf = losses.clone().requires_grad_()
        ref(leaf).backward()
        torch.testing.assert_close(w, 4 * leaf.grad)


def test_rlw_mean_weight_is_one():
    # E[softmax(z)_t] = 1/T by symmetry, so E[w_t] = 1 (equal weighting in expectation).
    m = methods.create("rlw", 4)
    torch.manual_seed(0)
    mean = torch.stack([m.weights(torch.zeros(4)) for _ in range(4000)]).mean(dim=0)
    torch.testing.assert_close(mean, torch.ones(4), atol=0.03, rtol=0.0)


# ============================================================================================
# Checkpointing
# ============================================================================================


def _round_trip(method, tmp_path):
    path = tmp_path / "method.pt"
    torch.save(method.state_dict(), path)
    restored = methods.create(method.name, method.num_tasks, **method.hyperparameters())
    restored.load_state_dict(torch.load(path, weights_only=True))
    return restored


def test_uncertainty_state_dict_round_trip(tmp_path):
    losses = torch.tensor([0.2, 1.0, 3.0])
    m = methods.create("uncertainty", 3, lr=0.05)
    _train_s_alone(m, losses, 20)
    restored = _round_trip(m, tmp_path)
    s = restored.parameters()[0]
    torch.testing.assert_close(s.detach(), m.parameters()[0].detach(), rtol=0, atol=0)
    assert isinstance(s, torch.nn.Parameter) and restored.optimizer_group()["params"][0] is s
    torch.testing.assert_close(restored.weights(losses), m.weights(losses), rtol=0, atol=0)


def test_dwa_state_dict_round_trip_continues(tmp_path):
    epochs = [[1.0, 2.0, 4.0], [0.5, 2.0, 6.0], [0.25, 1.0, 6.0]]
    m = methods.create("dwa", 3, temperature=2.0)
    for e in epochs[:2]:
        m.on_epoch_end(stats(e))
    restored = _round_trip(m, tmp_path)
    assert torch.equal(restored.weights(torch.zeros(3)), m.weights(torch.zeros(3)))
    restored.on_epoch_end(stats(epochs[2]))
    assert restored.weights(torch.zeros(3)).tolist() == pytest.approx(
        [0.913513, 0.913513, 1.172974], abs=1e-6
    )  # as in test_dwa_by_hand
    with pytest.raises(ValueError, match="history must be a list"):
        restored.load_state_dict({"method": "dwa", "num_tasks": 3, "state": {"history": [1]}})


def test_rlw_state_dict_round_trip(tmp_path):
    restored = _round_trip(methods.create("rlw", 3), tmp_path)
    torch.manual_seed(0)
    assert restored.weights(torch.zeros(3)).sum().item() == pytest.approx(3.0, rel=1e-6)


def test_uncertainty_bad_state():
    m = methods.create("uncertainty", 3)
    with pytest.raises(ValueError, match=r"log_var must be a Tensor\[3\], got \(2,\)"):
        m.load_state_dict(
            {"method": "uncertainty", "num_tasks": 3, "state": {"log_var": torch.zeros(2)}}
        )


# ============================================================================================
# Fixed: against torchjd.scalarization.Constant
# ============================================================================================


def test_fixed_objective_equals_torchjd_constant_and_never_moves():
    from torchjd.scalarization import Constant

    names = ["a", "b", "c"]
    given = [0.5, 2.0, 0.0]
    for weights, expected in (
        (given, given),
        ({"b": 3.0, "c": 0.25}, [1.0, 3.0, 0.25]),  # by name; "a" keeps 1.0
        (None, [1.0, 1.0, 1.0]),  # the default is equal weighting
    ):
        m = methods.create("fixed", 3, names, **({} if weights is None else {"weights": weights}))
        reference = Constant(torch.tensor(expected))
        model, make_losses = toy_problem(num_tasks=3)
        for _ in range(3):  # the weights never move, whatever the losses do
            losses = make_losses()
            ours = objective(m, losses)
            assert torch.allclose(ours, reference(losses), rtol=1e-6)
            assert m.weights(losses.detach()).tolist() == expected
            m.on_step_end()
            m.on_epoch_end(stats(losses.detach().tolist()))
    # stateless: a checkpoint round trip gives the same weights
    restored = methods.create("fixed", 3, names, weights=given)
    restored.load_state_dict(m.state_dict())
    assert restored.weights(torch.ones(3)).tolist() == given


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 2.0], "weights has 2 values for 3 tasks"),
        ({"z": 1.0}, "weights: unknown task 'z'; tasks: a, b, c"),
        ([0, 0, 0], "weights are all 0: no task would be trained"),
        ([-1.0, 1.0, 1.0], "weights[0] must be a finite number >= 0, got -1.0"),
        ([float("nan"), 1.0, 1.0], "weights[0] must be a finite number >= 0"),
        ("heavy", "weights must be a list (one per task) or a mapping task -> weight"),
        ([], "weights must not be empty"),
    ],
)
def test_fixed_refuses_bad_weights_in_one_line(weights, message):
    with pytest.raises(ValueError) as exc:
        methods.create("fixed", 3, ["a", "b", "c"], weights=weights)
    text = str(exc.value)
    assert text.startswith("method 'fixed': ") and message in text and "\n" not in text
