"""Masked tasks: a task without labels in a step must not move any method's state.

For every stateful method, a hand-built sequence of per-task inputs (losses; Jacobians for
GradNorm; epoch statistics for the epoch-level methods) in which one task is masked in 0%, 50%
or 100% of the steps, compared with the same method built for the other tasks alone on their
inputs: in every step where the task is absent, the labelled tasks are updated exactly as
without it, and the absent task's state stays as it was. Then the plumbing: ``TrainStep``
passes the batch's presence (OR-ed over the workers) through ``engine.backward``, and the loop
averages a task's epoch loss over the steps in which it had labels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor

import methods
from harness import trainloop
from harness.measure import StepTimer
from harness.trainloop import Collective, MemoryReporter, TrainStep, train_trial
from methods import engine
from tests.test_trainloop import spec_for
from tests.toy_nets import tanh_net

T = 4
MASKED = 1  # not the last task: the index bookkeeping matters
OTHERS = [t for t in range(T) if t != MASKED]
STEPS = 12


def absent_steps(rate: float, steps: int = STEPS) -> set[int]:
    """The steps in which the masked task has no labels (50%: a fixed draw, with runs)."""
    if rate == 0.0:
        return set()
    if rate == 1.0:
        return set(range(steps))
    order = torch.randperm(steps, generator=torch.Generator().manual_seed(7))
    return set(order[: int(steps * rate)].tolist())


# --------------------------------------------------------------------------------------------
# Restricting a method (and the loop's optimizer) to the labelled tasks
# --------------------------------------------------------------------------------------------


def restrict(value, idx: list[int], num_tasks: int):
    """``value`` with every per-task tensor (first dimension ``num_tasks``) cut to ``idx``; a
    square ``[T, T]`` one (per pair of tasks: GradVac's cosine targets) on both dimensions."""
    if isinstance(value, Tensor):
        if value.ndim == 2 and value.shape == (num_tasks, num_tasks):
            return value[idx][:, idx].clone()
        if value.ndim >= 1 and value.shape[0] == num_tasks:
            return value[idx].clone()
        return value.clone()
    if isinstance(value, dict):
        return {k: restrict(v, idx, num_tasks) for k, v in value.items()}
    if isinstance(value, list):
        return [restrict(v, idx, num_tasks) for v in value]
    return value


def restricted_method(method: methods.Method, idx: list[int]) -> methods.Method:
    """The same method built for the tasks ``idx`` only, in the state ``method`` has there."""
    state = method.state_dict()
    other = methods.create(method.name, len(idx), **method.hyperparameters())
    other.load_state_dict(
        {**state, "num_tasks": len(idx), "state": restrict(state["state"], idx, method.num_tasks)}
    )
    return other


def loop_optimizer(method: methods.Method) -> torch.optim.Optimizer | None:
    """Adam over the method's own parameters, as the training loop adds them (momentum: an
    absent task's parameter would keep moving on a zero gradient)."""
    group = method.optimizer_group()
    return torch.optim.Adam([group]) if group is not None else None


def restricted_optimizer(
    optimizer: torch.optim.Optimizer | None, method: methods.Method, idx: list[int], num_tasks: int
) -> torch.optim.Optimizer | None:
    if optimizer is None:
        return None
    other = loop_optimizer(method)
    state = optimizer.state_dict()["state"]
    other.load_state_dict(
        {
            "state": restrict(state, idx, num_tasks),
            "param_groups": other.state_dict()["param_groups"],
        }
    )
    return other


def per_task_state(method: methods.Method) -> dict[str, Tensor]:
    """The method's checkpointed per-task tensors, flattened to ``{path: Tensor[T]}``."""
    out: dict[str, Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == method.num_tasks:
            out[prefix] = value.detach().clone()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)

    walk("state", method.state_dict()["state"])
    return out


# --------------------------------------------------------------------------------------------
# The stateful methods, each with its inputs and its step as the training loop runs it
# --------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One step's inputs for ``T`` tasks; ``absent`` tasks get what a masked batch gives."""

    losses: Tensor  # [T] (FAMO: before the step)
    after: Tensor  # [T] FAMO's losses after the step
    jacobian: Tensor  # [T, n] GradNorm's J at the last shared layer
    stats: methods.EpochStats  # epoch-level methods
    second: Tensor | None = None  # [T, n] a second batch's J (two-batch methods: aggregate_pair)

    def masked(self, absent: list[int]) -> Inputs:
        losses, after, jacobian = self.losses.clone(), self.after.clone(), self.jacobian.clone()
        losses[absent], after[absent], jacobian[absent] = 0.0, 0.0, 0.0
        stats = {
            k: v.clone().index_fill_(0, torch.tensor(absent, dtype=torch.long), math.nan)
            for k, v in vars(self.stats).items()
        }
        second = None if self.second is None else self.second.clone()
        if second is not None:
            second[absent] = 0.0
        return Inputs(losses, after, jacobian, methods.EpochStats(**stats), second)

    def restricted(self, idx: list[int]) -> Inputs:
        stats = {k: v[idx] for k, v in vars(self.stats).items()}
        second = None if self.second is None else self.second[idx]
        return Inputs(
            self.losses[idx],
            self.after[idx],
            self.jacobian[idx],
            methods.EpochStats(**stats),
            second,
        )


def make_inputs(steps: int = STEPS, seed: int = 0) -> list[Inputs]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        losses = 0.2 + 2 * torch.rand(T, generator=g) * torch.arange(1, T + 1)
        after = losses * (0.7 + 0.3 * torch.rand(T, generator=g))
        jacobian = torch.randn(T, 6, generator=g) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
        stats = methods.EpochStats(
            train_accuracy=0.5 + 0.5 * torch.rand(T, generator=g),
            train_loss=0.2 + torch.rand(T, generator=g),
            val_accuracy=0.5 + 0.5 * torch.rand(T, generator=g),
            val_loss=0.2 + torch.rand(T, generator=g),
        )
        out.append(Inputs(losses, after, jacobian, stats))
    # two-batch methods: a second batch's J, J + noise (its own generator: the draws above stay)
    noise = torch.Generator().manual_seed(1000 + seed)
    for inputs in out:
        inputs.second = inputs.jacobian + 0.5 * torch.randn(T, 6, generator=noise)
    return out


@dataclass
class Outcome:
    weights: Tensor
    grad: Tensor | None = None  # the gradient of the method's own parameter, when it has one


def step(method, optimizer, inputs: Inputs, present: Tensor) -> Outcome:
    """One step (one epoch for the epoch-level methods) the way the training loop runs it."""
    if method.name in ("dwa", "deepchest"):
        method.on_epoch_end(inputs.stats)
        return Outcome(method.weights(torch.zeros(method.num_tasks)))
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    if method.name == "gradnorm":
        w = method.weights_from_jacobian(inputs.jacobian, inputs.losses, present=present)
    elif isinstance(method, methods.GradientAggregator) and method.batches_per_step == 2:
        # in float64: the float32 J_1 J_2^T of the [4, 6] and the [3, 6] Jacobians differ in
        # the last bit (BLAS blocking), which the simplex state carries beyond the tolerance
        j1, j2, losses = inputs.jacobian.double(), inputs.second.double(), inputs.losses
        _, w = method.aggregate_pair(j1, j2, losses.double(), present=present)
    elif isinstance(method, methods.GradientAggregator):
        _, w = method.aggregate(inputs.jacobian, inputs.losses, present=present)
    else:
        if method.name == "auto_lambda":  # its meta step comes first; any hypergradient with
            # an absent task's entry 0 (a zero loss has no look-ahead difference) will do
            method.meta_step(inputs.after - inputs.losses, present)
        w = engine.backward(method, inputs.losses.clone().requires_grad_(), present=present)
    params = method.parameters()
    grad = params[0].grad.clone() if params else None
    if optimizer is not None:
        optimizer.step()
    method.on_step_end(inputs.after if method.needs_losses_after else None)
    return Outcome(w, grad)


@dataclass
class Case:
    name: str
    hp: dict = field(default_factory=dict)
    #: per-task state entries that may change in a step where the task is absent
    #: (DWA records the absent epoch: its last labelled loss moves to the older slot)
    moving: tuple[str, ...] = ()
    #: compare this entry up to a common factor (GradNorm's present weights fill T - absent)
    proportional: tuple[str, ...] = ()


CASES = [
    Case("uncertainty"),
    Case("imtl_l"),
    Case("auto_lambda", {"lr": 0.05}),
    Case("gradnorm", proportional=("state.task_weights",)),
    Case("famo"),
    Case("dwa", moving=("state.history[0]", "state.history[1]")),
    Case("deepchest"),
    Case("deepchest", {"signal": "val_loss", "min_weight": 0.5}),
    # every gradient aggregator's own state: CR-MOGM's average and update_every's cache
    Case("mgda", {"ema": 0.7}),
    # (a new Jacobian step replaces the whole cache: an absent task's cached weight is then 0)
    Case(
        "upgrad",
        {"update_every": 3},
        moving=("state.cached_weights", "state.cached_present"),
    ),
    # stateful aggregators (GradVac with its own generator: the step and the restricted
    # method draw the same task orders)
    Case("gradvac", {"seed": 0}),
    Case("excess_mtl"),
    Case("excess_mtl", {"n_warmup_steps": 3, "baseline_step": "skip"}),
    Case("db_mtl", {"beta_sigma": 0.5}),
    Case("moco"),
    Case("moco", {"simplex": "softmax", "normalization": "none", "rho": 0.1}),
    Case("pcd"),
    Case("pcd", {"tau": 0.3, "beta": 0.9}),
    # two-batch methods (aggregate_pair): simplex masses, the present tasks keep their total
    Case("sdmgrad"),
    Case("sdmgrad", {"lam": 0.0, "momentum": 0.9, "ema": 0.5}),
    Case("modo"),
    Case("modo", {"gamma": 1.0, "rho": 0.0}),
]
STATEFUL = {c.name for c in CASES}


def assert_identical(a: Tensor, b: Tensor, msg: str) -> None:
    """Bit for bit, NaN where NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=msg)


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor], case: Case) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key in case.proportional:
            x, y = x / x.sum(), y / y.sum()
        torch.testing.assert_close(x, y, equal_nan=True, msg=key)


# --------------------------------------------------------------------------------------------
# The rule, for every stateful method
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}{'-' if c.hp else ''}{c.hp or ''}")
def test_absent_task_leaves_state_and_the_others_as_without_it(case, rate):
    """In every step where the task is absent: the labelled tasks get the weights and the state
    that the method built for them alone gets from the same state and inputs; the absent
    task's state is unchanged. With 0% masked, passing ``present`` changes nothing."""
    absent = absent_steps(rate)
    method = methods.create(case.name, T, **case.hp)
    optimizer = loop_optimizer(method)
    unmasked = methods.create(case.name, T, **case.hp)  # 0%: the run without present
    unmasked_opt = loop_optimizer(unmasked)
    compared = 0
    for s, raw in enumerate(make_inputs()):
        gone = [MASKED] if s in absent else []
        inputs = raw.masked(gone)
        present = torch.ones(T, dtype=torch.bool)
        present[gone] = False
        if not gone:
            if rate == 0.0:  # explicit all-present and the default give the same, bit for bit
                ours = step(method, optimizer, inputs, present)
                theirs = step(unmasked, unmasked_opt, inputs, None)
                assert torch.equal(ours.weights, theirs.weights)
                for k, v in per_task_state(method).items():
                    assert_identical(v, per_task_state(unmasked)[k], k)
            else:
                step(method, optimizer, inputs, present)
            continue
        alone = restricted_method(method, OTHERS)
        alone_opt = restricted_optimizer(optimizer, alone, OTHERS, T)
        before = per_task_state(method)
        ours = step(method, optimizer, inputs, present)
        theirs = step(alone, alone_opt, inputs.restricted(OTHERS), present[OTHERS])
        torch.testing.assert_close(ours.weights[OTHERS], theirs.weights)
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad[OTHERS], theirs.grad)
            assert float(ours.grad[MASKED]) == 0.0
        after = per_task_state(method)
        assert_same_state(restrict(after, OTHERS, T), per_task_state(alone), case)
        for key in after:
            if key not in case.moving:  # (FAMO's Adam moments start at 0 with its first step)
                was = before.get(key, torch.zeros_like(after[key]))
                assert_identical(after[key][MASKED], was[MASKED], key)
        compared += 1
    assert compared == len(absent)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}{'-' if c.hp else ''}{c.hp or ''}")
def test_task_never_labelled_is_as_if_it_did_not_exist(case):
    """Masked in every step: the whole trajectory of the labelled tasks is that of the method
    built for them alone from the start, and the masked task stays at its initial state."""
    method = methods.create(case.name, T, **case.hp)
    optimizer = loop_optimizer(method)
    alone = methods.create(case.name, T - 1, **case.hp)
    alone_opt = loop_optimizer(alone)
    initial = per_task_state(method)
    present = torch.ones(T, dtype=torch.bool)
    present[MASKED] = False
    for raw in make_inputs(steps=30, seed=1):
        ours = step(method, optimizer, raw.masked([MASKED]), present)
        theirs = step(alone, alone_opt, raw.restricted(OTHERS), present[OTHERS])
        torch.testing.assert_close(ours.weights[OTHERS], theirs.weights)
        state = per_task_state(method)
        exact = Case(case.name, moving=case.moving)  # no common factor here: w_masked stays 1
        assert_same_state(restrict(state, OTHERS, T), per_task_state(alone), exact)
        for key in state:
            if key not in case.moving:
                was = initial.get(key, torch.zeros_like(state[key]))
                assert_identical(state[key][MASKED], was[MASKED], key)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_uncertainty_tasks_are_independent_at_any_masking_rate(rate, optimizer):
    """Uncertainty weighting has no coupling between tasks: with the task masked in any share
    of the steps, the labelled tasks' log-variances follow the method built for them alone
    step for step, and the masked one's changes only in steps with its labels."""
    absent = absent_steps(rate, 40)

    def make(num_tasks):
        method = methods.create("uncertainty", num_tasks)
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        kwargs = {} if optimizer == "adam" else {"momentum": 0.9}
        return method, cls([method.optimizer_group()], **kwargs)

    (method, opt), (alone, alone_opt) = make(T), make(T - 1)
    for s, raw in enumerate(make_inputs(steps=40, seed=2)):
        gone = [MASKED] if s in absent else []
        present = torch.ones(T, dtype=torch.bool)
        present[gone] = False
        masked_before = float(method.log_var.detach()[MASKED])
        ours = step(method, opt, raw.masked(gone), present)
        theirs = step(alone, alone_opt, raw.restricted(OTHERS), present[OTHERS])
        torch.testing.assert_close(ours.weights[OTHERS], theirs.weights, rtol=0, atol=0)
        torch.testing.assert_close(method.log_var.detach()[OTHERS], alone.log_var.detach())
        if gone:
            assert float(method.log_var.detach()[MASKED]) == masked_before
        elif s > 0:
            assert float(method.log_var.detach()[MASKED]) != masked_before


# --------------------------------------------------------------------------------------------
# The symptoms of the issue
# --------------------------------------------------------------------------------------------


def test_uncertainty_weight_of_a_masked_task_stays_put_over_300_steps():
    """Before: the masked task's log-variance got gradient 0.5 from its ``0.5 s`` term every
    step, and its weight grew to the hundreds."""
    method = methods.create("uncertainty", 3)
    opt = torch.optim.Adam([method.optimizer_group()])
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        losses = torch.tensor([0.7, 0.0, 1.3], requires_grad=True)  # task 1: no labels
        w = engine.backward(method, losses)  # present by default: losses > 0
        opt.step()
        method.on_step_end()
    assert float(w[1]) == 0.5  # 0.5 exp(-0): untouched
    assert method.log_var.detach()[[0, 2]].tolist() == pytest.approx(
        [math.log(0.7), math.log(1.3)], abs=0.05
    )  # the labelled tasks converged to exp(s) = L


def test_gradnorm_labelled_tasks_stay_balanced_when_one_is_never_labelled():
    """Four tasks with gradients of equal norm whose losses fall at the same rate: GradNorm has
    nothing to correct, masked task or not. Before: the masked task's G = 0 dragged mean(G)
    down, every labelled weight fell to the floor and the masked task took the whole sum."""
    g = torch.Generator().manual_seed(0)
    method = methods.create("gradnorm", 4)
    opt = torch.optim.Adam([method.optimizer_group()])
    present = torch.tensor([True, True, True, False])
    for s in range(300):
        jacobian = torch.randn(4, 6, generator=g)
        jacobian = jacobian / jacobian.norm(dim=1, keepdim=True) * present[:, None]
        losses = 0.97**s * (1 + 0.1 * torch.rand(4, generator=g)) * present
        opt.zero_grad(set_to_none=True)
        method.weights_from_jacobian(jacobian, losses)  # present by default: losses > 0
        opt.step()
        method.on_step_end()
    w = method.task_weights.detach()
    assert w[:3].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert float(w[3]) == 1.0 and float(w.sum()) == pytest.approx(4.0)


def test_gradnorm_with_no_task_present_changes_nothing():
    method = methods.create("gradnorm", 3)
    opt = torch.optim.Adam([method.optimizer_group()])
    method.weights_from_jacobian(torch.eye(3), torch.tensor([1.0, 2.0, 3.0]))
    opt.step()
    method.on_step_end()
    before = per_task_state(method)
    opt.zero_grad(set_to_none=True)
    method.weights_from_jacobian(torch.zeros(3, 3), torch.zeros(3))
    assert method.task_weights.grad.tolist() == [0.0, 0.0, 0.0]
    opt.step()  # Adam's momentum moves every weight ...
    method.on_step_end()  # ... and every one is put back
    after = per_task_state(method)
    for key in before:
        assert_identical(after[key], before[key], key)


def test_dwa_task_back_from_an_epoch_without_labels_uses_its_last_labelled_epoch():
    def stats(loss):
        loss = torch.tensor(loss)
        return methods.EpochStats(train_accuracy=torch.zeros(3), train_loss=loss)

    m = methods.create("dwa", 3)  # temperature 2
    m.on_epoch_end(stats([1.0, 1.0, 1.0]))
    m.on_epoch_end(stats([1.0, 2.0, 1.0]))
    m.on_epoch_end(stats([1.0, math.nan, 1.0]))  # task 1 without labels all epoch
    # task 1 left out (weight 1); the others: DWA of two tasks with equal rates
    assert m.weights(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    m.on_epoch_end(stats([1.0, 1.0, 1.0]))
    # task 1's ratio: its epoch 4 over its last labelled epoch, 2: r = [1, 0.5, 1]
    # exp(r / 2) = [1.648721, 1.284025, 1.648721], sum 4.581468; w = 3 exp / sum
    w = m.weights(torch.zeros(3))
    assert w.tolist() == pytest.approx([1.079602, 0.840795, 1.079602], abs=1e-6)


def test_famo_weights_sum_to_the_number_of_labelled_tasks():
    """Sum T with every task labelled, like equal weighting's 1s; with one task absent the
    others' weights are FAMO's for them alone (sum T - 1), not inflated to T."""
    method = methods.create("famo", 3)
    w = method.weights(torch.tensor([1.0, 0.0, 4.0]))
    torch.testing.assert_close(w, torch.tensor([1.6, 0.0, 0.4]))  # 2 * (1, 1/4) / (5/4)


# --------------------------------------------------------------------------------------------
# The convention: present, its default and its checks
# --------------------------------------------------------------------------------------------


def test_present_defaults_to_positive_reduced_losses():
    """Without ``present`` the engine takes ``reduce(losses) > 0``: exact for masked_task_losses,
    and, on all-reduced (mean) losses, the OR over the workers."""
    runs = []
    for present in (None, torch.tensor([True, False, True])):
        method = methods.create("uncertainty", 3)
        losses = torch.tensor([1.0, 0.0, 3.0], requires_grad=True)
        engine.backward(method, losses, present=present)
        runs.append(method.log_var.grad.clone())
    assert torch.equal(runs[0], runs[1])
    assert runs[0].tolist() == [0.0, 0.0, -1.0]  # 0.5 - 0.5 L for the present tasks only
    # a present task whose (reduced) loss is positive although this worker has none of its
    # labels: its s learns from the reduced loss
    method = methods.create("uncertainty", 3)
    losses = torch.tensor([1.0, 0.0, 3.0], requires_grad=True)
    engine.backward(method, losses, reduce=lambda t: t + torch.tensor([0.0, 2.0, 0.0]))
    assert method.log_var.grad.tolist() == [0.0, -0.5, -1.0]


@pytest.mark.parametrize(
    ("present", "message"),
    [
        (torch.tensor([1.0, 0.0]), r"present must be a bool Tensor .*got torch.float32"),
        (torch.tensor([True]), r"present must have the losses' shape \(2,\), got \(1,\)"),
        ([True, False], "present must be a bool Tensor .*got list"),
    ],
)
def test_bad_present_is_refused(present, message):
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="engine.backward: " + message):
        engine.backward(methods.create("equal", 2), losses, present=present)
    with pytest.raises(ValueError, match="method 'famo': " + message):
        methods.create("famo", 2).weights(losses.detach(), present=present)


def test_every_method_with_state_is_covered():
    """A method that keeps state, owns parameters or has a hook must be in CASES above."""
    for name in methods.available():
        m = methods.create(name, T)
        cls = type(m)
        hooks = (
            cls.on_step_end is not methods.Method.on_step_end
            or cls.on_epoch_end is not methods.Method.on_epoch_end
        )
        if m.state_dict()["state"] or m.parameters() or hooks:
            assert name in STATEFUL, name


def test_checkpoint_round_trip_mid_masked_run_is_bit_identical():
    """Saved between two steps of a masked run, every stateful method continues as the
    original does (the step's presence lives only from the step's weights to its end)."""
    inputs = make_inputs(steps=8, seed=3)
    for case in CASES:
        original = methods.create(case.name, T, **case.hp)
        opt = loop_optimizer(original)
        for s, raw in enumerate(inputs[:4]):
            gone = [MASKED] if s % 2 else []
            present = torch.ones(T, dtype=torch.bool)
            present[gone] = False
            step(original, opt, raw.masked(gone), present)
        twin = methods.create(case.name, T, **case.hp)
        twin.load_state_dict(original.state_dict())
        twin_opt = loop_optimizer(twin)
        if opt is not None:  # (a deep copy, as a checkpoint on disk: no shared moments)
            twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for s, raw in enumerate(inputs[4:]):
            gone = [MASKED] if s % 2 else []
            present = torch.ones(T, dtype=torch.bool)
            present[gone] = False
            a = step(original, opt, raw.masked(gone), present)
            b = step(twin, twin_opt, raw.masked(gone), present)
            assert torch.equal(a.weights, b.weights), case.name
            for key, value in per_task_state(original).items():
                assert_identical(value, per_task_state(twin)[key], f"{case.name} {key}")


# --------------------------------------------------------------------------------------------
# The training loop's part: present from the mask, OR-ed over workers; epoch losses
# --------------------------------------------------------------------------------------------


def _batches(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for s in range(steps):
        x = torch.randn(16, 5, generator=g)
        y = (torch.rand(16, T, generator=g) > 0.5).float()
        m = torch.rand(16, T, generator=g) > 0.3
        if s % 3 != 0:
            m[:, MASKED] = False  # the masked task has labels in every third batch only
        yield x, y, m


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "famo"])
def test_train_step_tells_the_method_which_tasks_have_labels(name):
    torch.manual_seed(0)
    net = tanh_net(tasks=T)
    method = methods.create(name, T)
    groups = [{"params": list(net.parameters())}]
    if (group := method.optimizer_group()) is not None:
        groups.append(group)
    opt = torch.optim.Adam(groups, lr=0.01)
    train = TrainStep(
        net, net, method, opt, collective=Collective(), timer=StepTimer(torch.device("cpu"))
    )
    moved = 0
    for x, y, m in _batches(9):
        before = per_task_state(method)
        losses, _, _ = train(x, y, m)
        assert torch.equal(train.present, m.any(0))
        after = per_task_state(method)
        changed = False
        for k, value in after.items():
            was = before.get(k, torch.zeros_like(value))[MASKED]
            changed |= not (value[MASKED] == was or (value[MASKED].isnan() and was.isnan()))
        if bool(m[:, MASKED].any()):
            moved += changed
        else:
            assert float(losses[MASKED]) == 0.0 and not changed
    assert moved >= 2  # the rule is not "never move": with labels, the task's state learns


class _TwoWorkers(Collective):
    """Collectives of rank 0 of two, the other rank's contribution given."""

    world_size = 2

    def __init__(self, other: Tensor):
        self.other = other

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        return (tensor + self.other) / 2


def test_train_step_ors_presence_over_the_workers():
    """This worker has no label of the task, the other has: the task is present, so its
    log-variance learns (from the all-reduced loss), the same on both workers."""
    torch.manual_seed(0)
    net = tanh_net(tasks=T)
    method = methods.create("uncertainty", T)
    opt = torch.optim.Adam([{"params": list(net.parameters())}, method.optimizer_group()])
    other = torch.cat([torch.full((T,), 0.8), torch.ones(T)])  # [losses, presence] of rank 1
    train = TrainStep(
        net, net, method, opt, collective=_TwoWorkers(other), timer=StepTimer(torch.device("cpu"))
    )
    x, y, m = next(_batches(2))
    m[:, MASKED] = False
    losses, _, _ = train(x, y, m)
    assert train.present.tolist() == [True] * T
    assert float(losses[MASKED]) == pytest.approx(0.4)  # (0 + 0.8) / 2
    assert float(method.log_var.detach()[MASKED]) != 0.0


def test_loop_averages_a_task_loss_over_the_steps_with_its_labels(tmp_path, monkeypatch):
    """``EpochStats.train_loss``: per task the mean of the (all-reduced) step losses over the
    steps in which it had labels, NaN for a task without any; DWA then leaves that task out."""
    from deepchest.data import LabeledImages

    real_splits = trainloop.load_splits

    def masked(data):
        out = {}
        for split, d in real_splits(data).items():
            mask = d.mask.clone()
            if split == "train":
                mask[:, 3] = False  # never labelled
                mask[2:, 5] = False  # labelled in the first 2 training images only
            out[split] = LabeledImages(d.images, d.labels, mask, d.task_names)
        return out

    seen: list[tuple[Tensor, Tensor]] = []
    real_backward = trainloop.engine.backward

    def spy(method, losses, **kwargs):
        seen.append((kwargs["reduce"](None).clone(), kwargs["present"].clone()))
        return real_backward(method, losses, **kwargs)

    stats: list[methods.EpochStats] = []
    real_create = trainloop.methods.create

    def create(*args, **kwargs):
        method = real_create(*args, **kwargs)
        on_epoch_end = method.on_epoch_end
        method.on_epoch_end = lambda s: (stats.append(s), on_epoch_end(s))[1]
        return method

    monkeypatch.setattr(trainloop, "load_splits", masked)
    monkeypatch.setattr(trainloop.engine, "backward", spy)
    monkeypatch.setattr(trainloop.methods, "create", create)
    out = train_trial(spec_for(tmp_path, method="dwa", epochs=3), MemoryReporter())
    assert out["status"] == "completed", out["error"]
    per_epoch = len(seen) // 3
    for e, epoch_stats in enumerate(stats):
        losses = torch.stack([s for s, _ in seen[e * per_epoch : (e + 1) * per_epoch]])
        present = torch.stack([p for _, p in seen[e * per_epoch : (e + 1) * per_epoch]])
        assert not present[:, 3].any()
        assert 0 < int(present[:, 5].sum()) < per_epoch  # in some batches only
        expected = (losses * present).sum(0) / present.sum(0)
        torch.testing.assert_close(epoch_stats.train_loss, expected, equal_nan=True)
    weights = {
        r["task"]: r["weight"] for r in out["rows"] if r["split"] == "train" and r["epoch"] == 3
    }
    tasks = list(weights)
    assert weights[tasks[3]] == 1.0  # left out of the softmax
    assert sum(weights.values()) == pytest.approx(len(tasks))
    assert len({round(w, 6) for t, w in weights.items() if t != tasks[3]}) > 1  # reweighted
