"""Tests of the loss-level scalarizations stch, geometric_mean, scale_invariant and imtl_l.

Objectives and gradients against torchjd 0.18.0's scalarizers (``STCH``, ``GeometricMean``,
``IMTLL``; scale_invariant has none: hand-derived values), on random, badly scaled, equal and
lopsided losses for T = 1..14 and over several training steps of a small model; the reported
weights against autograd's dObjective/dL; masked tasks (the method built for the present tasks
alone, never ``log 0``); bad hyperparameters; imtl_l's parameters and checkpoints.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import Tensor
from torchjd.scalarization import IMTLL, STCH, UW, GeometricMean

import methods
from methods import engine

NAMES = ("stch", "geometric_mean", "scale_invariant", "imtl_l")
STATELESS = ("stch", "geometric_mean", "scale_invariant")
LN2 = math.log(2.0)


def loss_kinds(num_tasks: int, seed: int = 0) -> dict[str, Tensor]:
    """Positive float64 losses of several kinds for ``num_tasks`` tasks."""
    g = torch.Generator().manual_seed(seed * 100 + num_tasks)
    kinds = {
        "random": 0.05 + 3 * torch.rand(num_tasks, generator=g, dtype=torch.float64),
        "badly_scaled": 10 ** (12 * torch.rand(num_tasks, generator=g, dtype=torch.float64) - 6),
        "equal": torch.full((num_tasks,), 0.7, dtype=torch.float64),
        "lopsided": torch.ones(num_tasks, dtype=torch.float64),
    }
    kinds["lopsided"][-1] = 1e4
    return kinds


def run(method: methods.Method, losses: Tensor, present: Tensor | None = None, reduced=None):
    """What ``engine.backward`` does, returning (objective value, dObjective/dlosses, weights)."""
    leaf = losses.detach().clone().requires_grad_()
    detached = leaf.detach().clone() if reduced is None else reduced
    weights = method.weights(detached, present=present)
    value = method.objective(leaf, reduced=detached, weights=weights, present=present)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad, weights


def reference_value_and_grad(scalarizer, losses: Tensor, factor: float = 1.0):
    leaf = losses.detach().clone().requires_grad_()
    value = factor * scalarizer(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def set_log_scale(method: methods.Method, s: Tensor) -> None:
    method.load_state_dict(
        {"method": method.name, "num_tasks": method.num_tasks, "state": {"log_scale": s}}
    )


def close(actual, expected, rtol=1e-10, atol=1e-12, msg=""):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)


# ============================================================================================
# Registry and hyperparameters
# ============================================================================================


def test_registered_and_described():
    by_name = {i.name: i for i in methods.describe()}
    assert by_name["stch"].hyperparameters == {"mu": 1.0, "preference": None}
    assert by_name["geometric_mean"].hyperparameters == {}
    assert by_name["scale_invariant"].hyperparameters == {}
    assert by_name["imtl_l"].hyperparameters == {"lr": 0.025}
    for name in NAMES:
        info = by_name[name]
        assert info.level == "loss" and info.summary and "\n" not in info.summary
        cls = type(methods.create(name, 3))
        assert issubclass(cls, methods.LossWeighting)
        assert "arXiv:" in cls.reference or name == "imtl_l"
        assert "code:" in cls.reference


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("stch", {"mu": 0}, "mu must be a finite number > 0, got 0"),
        ("stch", {"mu": -1.0}, "mu must be a finite number > 0, got -1.0"),
        ("stch", {"mu": math.inf}, "mu must be a finite number > 0, got inf"),
        ("stch", {"mu": "1"}, "mu must be a finite number > 0, got '1'"),
        ("stch", {"mu": True}, "mu must be a finite number > 0, got True"),
        ("stch", {"lr": 1}, "unknown hyperparameter 'lr'; valid: mu, preference"),
        (
            "stch",
            {"preference": [1.0, 2.0]},
            "preference has 2 values for 3 tasks (give one per task, or a mapping task -> number)",
        ),
        (
            "stch",
            {"preference": [1.0, 0.0, 1.0]},
            "preference[1] must be a finite number > 0, got 0.0",
        ),
        (
            "stch",
            {"preference": [1, 2, math.nan]},
            "preference[2] must be a finite number > 0, got nan",
        ),
        ("stch", {"preference": []}, "preference must not be empty"),
        (
            "stch",
            {"preference": "abc"},
            "preference must be a list (one per task) or a mapping task -> number, got 'abc'",
        ),
        (
            "stch",
            {"preference": {"a": 2}},
            "preference: a mapping by task name needs the task names",
        ),
        ("stch", {"preference": {"a": -2}}, "preference['a'] must be a finite number > 0, got -2"),
        ("geometric_mean", {"mu": 1}, "unknown hyperparameter 'mu'; valid: (none)"),
        ("scale_invariant", {"eps": 1e-8}, "unknown hyperparameter 'eps'; valid: (none)"),
        ("imtl_l", {"mu": 1}, "unknown hyperparameter 'mu'; valid: lr"),
        ("imtl_l", {"lr": 0}, "lr must be a finite number > 0, got 0"),
        ("imtl_l", {"lr": "0.1"}, "lr must be a finite number > 0, got '0.1'"),
    ],
)
def test_bad_hyperparameters(name, hp, message):
    with pytest.raises(ValueError) as exc:
        methods.create(name, num_tasks=3, **hp)
    assert str(exc.value) == f"method {name!r}: {message}"


def test_preference_by_task_name():
    names = ["a", "b", "c"]
    with pytest.raises(ValueError) as exc:
        methods.create("stch", 3, names, preference={"x": 1.0})
    assert str(exc.value) == "method 'stch': preference: unknown task 'x'; tasks: a, b, c"
    by_name = methods.create("stch", 3, names, preference={"c": 4.0, "a": 2.0})
    by_list = methods.create("stch", 3, preference=[2, 1, 4])
    assert by_name.hyperparameters() == {"mu": 1.0, "preference": {"c": 4.0, "a": 2.0}}
    assert by_list.hyperparameters() == {"mu": 1.0, "preference": [2.0, 1.0, 4.0]}
    losses = torch.tensor([0.3, 1.2, 0.4])
    assert torch.equal(by_name.weights(losses), by_list.weights(losses))


@pytest.mark.parametrize("name", STATELESS)
def test_stateless_methods_have_no_state_or_parameters(name):
    m = methods.create(name, 3)
    assert m.parameters() == [] and m.optimizer_group() is None and m.to("cpu") is m
    assert m.state_dict()["state"] == {}
    m.load_state_dict(m.state_dict())


# ============================================================================================
# Against torchjd, every T and kind of losses
# ============================================================================================


def reference_for(name: str, num_tasks: int, hp: dict, s: Tensor | None = None):
    """(scalarizer, factor): our objective is ``factor * scalarizer(L)``."""
    if name == "stch":
        pref = torch.tensor(hp.get("preference") or [1.0] * num_tasks, dtype=torch.float64)
        return STCH(hp.get("mu", 1.0), weights=pref / pref.mean()), num_tasks
    if name == "geometric_mean":
        return GeometricMean(), num_tasks
    if name == "imtl_l":
        ref = IMTLL(num_tasks).double()
        with torch.no_grad():
            ref.log_scale.copy_(s)
        return ref, 1.0
    # no torchjd reference: the definition, sum_t log L_t (Nash-MTL's torch.sum(torch.log(L)))
    return (lambda values: torch.log(values).sum()), 1.0


CONFIGS = [
    ("stch", {}),
    ("stch", {"mu": 0.01}),
    ("stch", {"mu": 20.0}),
    ("stch", {"preference": "random"}),
    ("geometric_mean", {}),
    ("scale_invariant", {}),
    ("imtl_l", {}),
]


@pytest.mark.parametrize(("name", "hp"), CONFIGS, ids=lambda v: str(v) if v else "")
def test_objective_and_gradient_match_the_reference(name, hp):
    """For T = 1..14 and every kind of losses: the objective's value and its gradient w.r.t.
    the losses are the reference's (torchjd's scalarizer times the documented factor), and the
    reported weights are that gradient."""
    for num_tasks in range(1, 15):
        g = torch.Generator().manual_seed(num_tasks)
        given = dict(hp)
        if hp.get("preference") == "random":
            given["preference"] = (0.1 + torch.rand(num_tasks, generator=g)).tolist()
        s = torch.randn(num_tasks, generator=g, dtype=torch.float64)
        method = methods.create(name, num_tasks, **given)
        if name == "imtl_l":
            method.log_scale.data = s.clone()  # compare in float64
        ref, factor = reference_for(name, num_tasks, given, s)
        for kind, losses in loss_kinds(num_tasks).items():
            msg = f"T={num_tasks} {kind}"
            value, grad, weights = run(method, losses)
            ref_value, ref_grad = reference_value_and_grad(ref, losses, factor)
            close(value, ref_value, msg=msg)
            close(grad, ref_grad, msg=msg)
            assert weights.dtype == torch.float32
            close(weights, grad.float(), rtol=1e-6, atol=1e-30, msg=msg)


def test_stch_is_torchjd_default_preference_times_t_squared():
    """torchjd's default preference is uniform 1/T: ``STCH(mu')`` is ours with ``mu = T mu'``
    divided by ``T^2``."""
    for num_tasks in (1, 2, 5, 14):
        losses = loss_kinds(num_tasks)["random"]
        ours = methods.create("stch", num_tasks, mu=0.5 * num_tasks)
        value, grad, _ = run(ours, losses)
        ref_value, ref_grad = reference_value_and_grad(STCH(0.5), losses, num_tasks**2)
        close(value, ref_value)
        close(grad, ref_grad)


def toy_problem(seed: int, num_tasks: int = 4):
    """A small shared-trunk model and a closure computing its per-task losses (positive,
    different scales)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, num_tasks)
    ).double()
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randn(24, num_tasks, dtype=torch.float64) * 3.0 ** torch.arange(num_tasks)

    def make_losses(m):
        return ((m(x) - y) ** 2).mean(dim=0)

    return model, make_losses


@pytest.mark.parametrize("name", ["stch", "geometric_mean"])
def test_training_steps_match_torchjd(name):
    """Ten SGD steps of a model: ``engine.backward`` with our method and ``backward`` of
    ``T * torchjd scalarizer`` give the same parameters after every step."""
    model, make_losses = toy_problem(seed=0)
    ref_model = copy.deepcopy(model)
    ours = methods.create(name, 4, mu=2.0) if name == "stch" else methods.create(name, 4)
    ref = (
        STCH(2.0, weights=torch.ones(4, dtype=torch.float64)) if name == "stch" else GeometricMean()
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(10):
        opt.zero_grad()
        ref_opt.zero_grad()
        engine.backward(ours, make_losses(model))
        (4 * ref(make_losses(ref_model))).backward()
        opt.step()
        ref_opt.step()
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            close(p.detach(), q.detach())
    assert not torch.equal(model[0].weight, toy_problem(seed=0)[0][0].weight)  # it moved


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_imtl_l_training_matches_torchjd(opt):
    """Twenty steps, the model with weight decay and the scales in their own group (lr 0.025,
    no weight decay) on both sides: the same scales and model after every step."""
    model, make_losses = toy_problem(seed=1)
    ref_model = copy.deepcopy(model)
    ours = methods.create("imtl_l", 4)
    ours.log_scale.data = ours.log_scale.data.double()
    ref = IMTLL(4).double()

    def make_opt(params, group):
        cls = torch.optim.SGD if opt == "sgd" else torch.optim.Adam
        return cls([{"params": params}, group], lr=0.01, weight_decay=1e-3)

    opt_ours = make_opt(model.parameters(), ours.optimizer_group())
    opt_ref = make_opt(
        ref_model.parameters(), {"params": ref.parameters(), "lr": 0.025, "weight_decay": 0.0}
    )
    for _ in range(20):
        opt_ours.zero_grad()
        opt_ref.zero_grad()
        losses = make_losses(model)
        value, _, _ = run(ours, losses)
        engine.backward(ours, losses)
        ref_value = ref(make_losses(ref_model))
        ref_value.backward()
        close(value, ref_value.detach())
        opt_ours.step()
        opt_ref.step()
        ours.on_step_end()
        close(ours.log_scale.detach(), ref.log_scale.detach())
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            close(p.detach(), q.detach())
    assert ours.log_scale.detach().abs().max() > 0.1  # the scales moved


# ============================================================================================
# Hand-derived values
# ============================================================================================


def test_geometric_mean_by_hand():
    # L = [1, 4]: GM = sqrt(4) = 2, objective T GM = 4; weights GM / L = [2, 0.5]
    value, grad, w = run(methods.create("geometric_mean", 2), torch.tensor([1.0, 4.0]))
    assert value.item() == pytest.approx(4.0) and w.tolist() == pytest.approx([2.0, 0.5])
    assert grad.tolist() == pytest.approx([2.0, 0.5])
    # equal losses: the weights are equal weighting's 1s
    _, _, w = run(methods.create("geometric_mean", 3), torch.full((3,), 0.37))
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_scale_invariant_by_hand():
    # L = [0.5, 2, 4]: objective ln 0.5 + ln 2 + ln 4 = ln 4; weights 1 / L = [2, 0.5, 0.25]
    value, grad, w = run(methods.create("scale_invariant", 3), torch.tensor([0.5, 2.0, 4.0]))
    assert value.item() == pytest.approx(math.log(4.0))
    assert w.tolist() == grad.tolist() == [2.0, 0.5, 0.25]


def test_stch_by_hand():
    # T = 2, mu = 1, L = [1, 1 + ln 3]: exp(L) = [e, 3e], sum 4e, objective 2 (ln 4 + 1);
    # softmax = [1/4, 3/4], weights 2 softmax = [0.5, 1.5] (sum T)
    value, grad, w = run(methods.create("stch", 2), torch.tensor([1.0, 1.0 + math.log(3.0)]))
    assert value.item() == pytest.approx(2 * (math.log(4.0) + 1.0))
    assert w.tolist() == pytest.approx([0.5, 1.5]) and grad.tolist() == pytest.approx([0.5, 1.5])
    # preference [1, 3] -> lambda = [0.5, 1.5] (mean 1); L = [2, 2]: lambda L = [1, 3], mu = 2
    # exp(lambda L / mu) = [e^0.5, e^1.5]; softmax = [1, e] / (1 + e) = [0.268941, 0.731059]
    # weights 2 lambda softmax = [0.268941, 2.193176]
    m = methods.create("stch", 2, mu=2.0, preference=[1.0, 3.0])
    _, grad, w = run(m, torch.tensor([2.0, 2.0]))
    assert w.tolist() == pytest.approx([0.268941, 2.193176], abs=1e-6)
    assert grad.tolist() == pytest.approx(w.tolist(), abs=1e-6)


def test_imtl_l_by_hand():
    m = methods.create("imtl_l", 2)
    set_log_scale(m, torch.tensor([LN2, -LN2]))
    losses = torch.tensor([3.0, 0.25], requires_grad=True)
    # exp(s) = [2, 1/2]: objective 2*3 - ln2 + 0.5*0.25 + ln2 = 6.125; weights exp(s) = [2, 0.5]
    # d/ds_t = exp(s_t) L_t - 1 = [5, -0.875]
    assert run(m, losses)[0].item() == pytest.approx(6.125)
    w = engine.backward(m, losses)
    assert w.tolist() == pytest.approx([2.0, 0.5]) and not w.requires_grad
    assert losses.grad.tolist() == pytest.approx([2.0, 0.5])
    assert m.log_scale.grad.tolist() == pytest.approx([5.0, -0.875])


def test_scale_invariant_model_gradient_is_sum_of_gradients_over_losses():
    """Over five SGD steps of a model: the update ``engine.backward`` gives is
    ``sum_t grad L_t / L_t``, built here from the per-task gradients; and multiplying a task's
    loss by a constant (its scale) does not change it."""
    model, make_losses = toy_problem(seed=2)
    method = methods.create("scale_invariant", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    params = list(model.parameters())
    for _ in range(5):
        losses = make_losses(model)
        per_task = [torch.autograd.grad(losses[t], params, retain_graph=True) for t in range(4)]
        expected = [
            sum(per_task[t][i] / losses[t].detach() for t in range(4)) for i in range(len(params))
        ]
        opt.zero_grad()
        engine.backward(method, losses)
        for p, e in zip(params, expected, strict=True):
            close(p.grad, e)
        scaled = make_losses(model) * torch.tensor([1e-3, 1.0, 50.0, 1e4], dtype=torch.float64)
        grads = torch.autograd.grad(
            method.objective(scaled, reduced=scaled.detach(), weights=None), params
        )
        for g, e in zip(grads, expected, strict=True):
            close(g, e, rtol=1e-8)
        opt.step()


def test_stch_bounds_and_limits():
    """A smooth maximum: ``T max L <= objective <= T (max L + mu log T)``; a small ``mu`` puts
    all of the weight ``T`` on the largest loss, a large one gives weights near 1."""
    losses = torch.tensor([0.3, 1.7, 0.9, 1.2], dtype=torch.float64)
    for mu in (0.01, 0.3, 3.0):
        value = run(methods.create("stch", 4, mu=mu), losses)[0].item()
        assert 4 * 1.7 <= value <= 4 * (1.7 + mu * math.log(4)) + 1e-12
    _, _, w = run(methods.create("stch", 4, mu=1e-3), losses)
    assert w.tolist() == pytest.approx([0.0, 4.0, 0.0, 0.0], abs=1e-6)
    _, _, w = run(methods.create("stch", 4, mu=1e4), losses)
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0], abs=1e-3)
    # no overflow for huge losses and a small mu (the exponents are shifted by their maximum)
    value, grad, w = run(methods.create("stch", 2, mu=1e-6), torch.tensor([1e30, 2e30]))
    assert torch.isfinite(value) and value.item() == pytest.approx(4e30)
    assert grad.tolist() == w.tolist() == [0.0, 2.0]


def test_imtl_l_is_twice_uncertainty_at_minus_s():
    """torchjd's docstring: IMTL-L = 2 UW at s = -log sigma^2. Under Adam (invariant to the
    factor 2 up to eps) the two methods' scales mirror each other step by step."""
    losses = torch.tensor([0.2, 1.0, 3.0])
    imtl, unc = methods.create("imtl_l", 3), methods.create("uncertainty", 3)
    opts = [torch.optim.Adam([m.optimizer_group()], eps=1e-12) for m in (imtl, unc)]
    for _ in range(40):
        for m, opt in zip((imtl, unc), opts, strict=True):
            opt.zero_grad()
            engine.backward(m, losses.clone().requires_grad_())
            opt.step()
            m.on_step_end()
        close(imtl.log_scale.detach(), -unc.log_var.detach(), rtol=1e-5, atol=1e-6)
        close(imtl.weights(losses), 2 * unc.weights(losses), rtol=1e-5, atol=1e-6)
    ref = UW(3)
    with torch.no_grad():
        ref.log_var.copy_(-imtl.log_scale)
    close(run(imtl, losses)[0], 2 * ref(losses).detach(), rtol=1e-6, atol=1e-6)


# ============================================================================================
# Effective weights = dObjective/dL; DDP's reduced losses
# ============================================================================================


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_the_gradient_of_the_objective(name):
    """With random presence, random scales (imtl_l) and float32 losses, as the loop runs it:
    ``engine.backward``'s weights are autograd's dObjective/dL."""
    g = torch.Generator().manual_seed(5)
    for num_tasks in (1, 3, 14):
        method = methods.create(name, num_tasks, **({"mu": 0.2} if name == "stch" else {}))
        if name == "imtl_l":
            set_log_scale(method, torch.randn(num_tasks, generator=g))
        for _ in range(4):
            losses = (0.05 + 2 * torch.rand(num_tasks, generator=g)).requires_grad_()
            present = torch.rand(num_tasks, generator=g) > 0.3
            w = engine.backward(method, losses, present=present)
            close(w, losses.grad, rtol=1e-5, atol=1e-7)
            assert not w[~present].any()


@pytest.mark.parametrize("name", NAMES)
def test_reduced_losses_give_weights_and_value_model_gets_local_gradient(name):
    """Under DDP ``reduce`` all-reduces the losses: the objective's value and weights are those
    of the reduced losses (the same on every worker) and this worker's losses get those
    weights as their gradient (DDP averages it)."""
    method = methods.create(name, 3)
    local = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    reduced = torch.tensor([1.0, 0.25, 2.0], dtype=torch.float64)
    value, grad, w = run(method, local, reduced=reduced)
    alone_value, alone_grad, _ = run(methods.create(name, 3), reduced)
    close(value, alone_value)
    close(grad, alone_grad)
    close(w, grad.float(), rtol=1e-6, atol=0.0)


def test_engine_applies_scale_to_the_objective_only():
    for name in NAMES:
        losses = torch.tensor([0.5, 2.0], requires_grad=True)
        w = engine.backward(methods.create(name, 2), losses, scale=lambda o: 8 * o)
        close(losses.grad, 8 * w, rtol=1e-6, atol=0.0, msg=name)


# ============================================================================================
# Masked tasks
# ============================================================================================


@pytest.mark.parametrize("name", STATELESS)
def test_masked_tasks_are_the_method_built_for_the_present_tasks(name):
    """For every presence pattern of 5 tasks (absent: loss 0): value, gradient and weights on
    the present tasks are those of the method built for them alone; 0 for the absent ones;
    everything finite (no ``log 0``)."""
    hp = {"mu": 0.5, "preference": [1.0, 2.0, 0.5, 3.0, 1.5]} if name == "stch" else {}
    full = torch.tensor([0.8, 0.1, 2.5, 1.3, 0.05], dtype=torch.float64)
    method = methods.create(name, 5, **hp)
    for pattern in range(1, 2**5):
        present = torch.tensor([bool(pattern >> t & 1) for t in range(5)])
        idx = present.nonzero().flatten().tolist()
        losses = torch.where(present, full, torch.zeros_like(full))
        sub_hp = {"mu": 0.5, "preference": [hp["preference"][i] for i in idx]} if hp else {}
        alone = methods.create(name, len(idx), **sub_hp)
        want = run(alone, full[idx])
        for given in (present, None):  # explicit, and the default losses > 0
            value, grad, w = run(method, losses, present=given)
            assert torch.isfinite(value) and torch.isfinite(grad).all()
            close(value, want[0], msg=str(pattern))
            close(grad[idx], want[1], msg=str(pattern))
            close(w[idx], want[2], rtol=1e-6, atol=0.0)
            assert not grad[~present].any() and not w[~present].any()


@pytest.mark.parametrize("name", NAMES)
def test_no_task_present_gives_a_zero_finite_update(name):
    """A batch without any label: objective 0, gradient 0, weights 0, nothing NaN, and
    ``engine.backward`` still runs (the objective stays on the graph)."""
    method = methods.create(name, 3)
    optimizer = torch.optim.Adam([method.optimizer_group()]) if method.parameters() else None
    losses = torch.zeros(3, requires_grad=True)
    w = engine.backward(method, losses)
    assert w.tolist() == [0.0, 0.0, 0.0] and losses.grad.tolist() == [0.0, 0.0, 0.0]
    assert run(method, torch.zeros(3))[0].item() == 0.0
    if optimizer is not None:
        assert method.log_scale.grad.tolist() == [0.0, 0.0, 0.0]
        optimizer.step()
        method.on_step_end()
        assert method.log_scale.detach().tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["geometric_mean", "scale_invariant"])
def test_present_task_with_zero_loss_is_left_out_of_the_logarithms(name):
    """``present`` says a task has labels but its (reduced) loss is exactly 0: its log is not
    taken, it gets weight 0 and the others are as without it (a geometric mean of 0 would give
    every task a 0 or NaN gradient). STCH, which takes no log, keeps it as a term."""
    method = methods.create(name, 3)
    present = torch.tensor([True, True, True])
    value, grad, w = run(method, torch.tensor([1.0, 0.0, 4.0]), present=present)
    alone = run(methods.create(name, 2), torch.tensor([1.0, 4.0]))
    close(value, alone[0])
    close(grad[[0, 2]], alone[1])
    assert grad[1].item() == 0.0 and w[1].item() == 0.0 and torch.isfinite(grad).all()
    stch = methods.create("stch", 3)
    _, _, w = run(stch, torch.tensor([1.0, 0.0, 4.0]), present=present)
    assert w[1].item() > 0.0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_imtl_l_absent_scale_stays_put_and_the_others_are_as_alone(optimizer):
    """The absent task's scale gets gradient 0 (not the -1 of its ``-s`` term) and is put back
    after the optimizer step, which momentum would otherwise move; the present tasks' scales
    follow imtl_l built for them alone, step for step."""

    def make(num_tasks):
        method = methods.create("imtl_l", num_tasks)
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        kwargs = {} if optimizer == "adam" else {"momentum": 0.9}
        return method, cls([method.optimizer_group()], **kwargs)

    (method, opt), (alone, alone_opt) = make(3), make(2)
    g = torch.Generator().manual_seed(4)
    for step in range(30):
        losses = 0.1 + 2 * torch.rand(3, generator=g)
        absent = step % 3 == 2  # task 1 labelled in two steps out of three
        if absent:
            losses[1] = 0.0
        before = float(method.log_scale.detach()[1])
        for m, o, values in ((method, opt, losses), (alone, alone_opt, losses[[0, 2]])):
            o.zero_grad()
            engine.backward(m, values.clone().requires_grad_())
            o.step()
            m.on_step_end()
        if absent:
            assert float(method.log_scale.detach()[1]) == before
        torch.testing.assert_close(method.log_scale.detach()[[0, 2]], alone.log_scale.detach())
    assert abs(float(method.log_scale.detach()[1])) > 0.05  # it learned when labelled


# ============================================================================================
# imtl_l: parameters, device, checkpoints
# ============================================================================================


def test_imtl_l_parameters_and_group():
    m = methods.create("imtl_l", 3, lr=0.1)
    (s,) = m.parameters()
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad
    assert torch.equal(s.detach(), torch.zeros(3))  # exp(0) = 1: equal weighting at the start
    assert m.optimizer_group() == {"params": [s], "lr": 0.1, "weight_decay": 0.0}
    assert m.to("cpu") is m and m.parameters()[0] is s


def test_imtl_l_device_mismatch_is_explained():
    m = methods.create("imtl_l", 2)
    m.log_scale = torch.nn.Parameter(torch.zeros(2, device="meta"))  # as if moved elsewhere
    with pytest.raises(ValueError, match=r"method 'imtl_l': .*call method.to\(device\)"):
        engine.backward(m, torch.tensor([1.0, 2.0], requires_grad=True))


def test_imtl_l_checkpoint_round_trip_is_bit_identical():
    """Saved mid-run (on disk, loaded with weights_only), with the optimizer's state: the twin
    continues exactly as the original, masked steps included."""
    g = torch.Generator().manual_seed(6)
    inputs = [0.1 + 2 * torch.rand(4, generator=g) for _ in range(10)]
    original = methods.create("imtl_l", 4)
    opt = torch.optim.Adam([original.optimizer_group()])

    def step(m, o, losses, present):
        o.zero_grad()
        w = engine.backward(m, losses.clone().requires_grad_(), present=present)
        o.step()
        m.on_step_end()
        return w

    presence = [torch.tensor([True, s % 2 == 0, True, True]) for s in range(10)]
    for s in range(5):
        step(original, opt, inputs[s], presence[s])
    buffer = io.BytesIO()
    torch.save({"method": original.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = methods.create("imtl_l", 4)
    twin.load_state_dict(saved["method"])
    twin_opt = torch.optim.Adam([twin.optimizer_group()])
    twin_opt.load_state_dict(saved["opt"])
    for s in range(5, 10):
        a = step(original, opt, inputs[s], presence[s])
        b = step(twin, twin_opt, inputs[s], presence[s])
        assert torch.equal(a, b)
        assert torch.equal(original.log_scale.detach(), twin.log_scale.detach())
    assert original.log_scale.detach().abs().min() > 0


def test_imtl_l_bad_state_is_refused():
    m = methods.create("imtl_l", 3)
    state = {"method": "imtl_l", "num_tasks": 3, "state": {"log_scale": torch.zeros(2)}}
    with pytest.raises(ValueError) as exc:
        m.load_state_dict(state)
    assert str(exc.value) == "method 'imtl_l': state_dict log_scale must be a Tensor[3], got (2,)"
    with pytest.raises(ValueError, match="cannot load a state_dict of method 'uncertainty'"):
        m.load_state_dict(methods.create("uncertainty", 3).state_dict())
