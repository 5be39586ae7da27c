"""Tests of the ``methods`` package: registry, Equal, DeepChest, engine, checkpointing."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re

import pytest
import torch

import methods
from methods import engine
from methods.base import LossWeighting

NAN = math.nan


def stats(train_acc, *, val_acc=None, val_loss=None, train_loss=None) -> methods.EpochStats:
    """EpochStats from plain lists (train_loss defaults to zeros: DeepChest does not read it)."""

    def t(x):
        return None if x is None else torch.tensor(x, dtype=torch.float32)

    return methods.EpochStats(
        train_accuracy=t(train_acc),
        train_loss=t(train_loss if train_loss is not None else [0.0] * len(train_acc)),
        val_accuracy=t(val_acc),
        val_loss=t(val_loss),
    )


def run_epochs(method, signals, key="train_acc"):
    """Feed one epoch per entry of ``signals`` (as ``key``); return the weights after each epoch.

    For a val key the train accuracies are all 0.5, which would down-weight every task.
    """
    out = []
    for s in signals:
        method.on_epoch_end(stats(s) if key == "train_acc" else stats([0.5] * len(s), **{key: s}))
        out.append(method.weights(torch.zeros(len(s))).tolist())
    return out


def assert_trajectory(actual, expected):
    assert len(actual) == len(expected)
    for epoch, (a, e) in enumerate(zip(actual, expected, strict=True), start=1):
        assert a == pytest.approx(e, abs=1e-6), f"epoch {epoch}: {a} != {e}"


# ============================================================================================
# Registry
# ============================================================================================


def test_available_is_sorted_names():
    names = methods.available()
    assert names == sorted(names)
    assert {"deepchest", "equal", "uncertainty", "dwa", "rlw", "pcgrad", "mgda"} <= set(names)


@pytest.mark.parametrize("name", ["deepchest", "equal"])
def test_create_each(name):
    m = methods.create(name, num_tasks=4, task_names=["a", "b", "c", "d"])
    assert isinstance(m, methods.LossWeighting)
    assert m.name == name
    assert m.level == "loss"
    assert m.num_tasks == 4
    assert m.task_names == ["a", "b", "c", "d"]
    w = m.weights(torch.rand(4))
    assert w.shape == (4,) and w.dtype == torch.float32
    m.on_step_end()  # no-op hook
    m.on_step_end(losses_after=torch.rand(4))


def test_create_positional_num_tasks():
    assert methods.create("equal", 3).num_tasks == 3


def test_unknown_method_lists_available():
    with pytest.raises(ValueError) as exc:
        methods.create("gradnorm_v2", num_tasks=3)
    listed = ", ".join(methods.available())
    hint = " (did you mean 'gradnorm'?)"
    assert str(exc.value) == f"unknown method 'gradnorm_v2'{hint}; available: {listed}"
    # nothing close: no guess
    with pytest.raises(ValueError, match=r"^unknown method 'zzz'; available: "):
        methods.create("zzz", num_tasks=3)
    guess = r"unknown hyperparameter 'levle' \(did you mean 'level'\?\)"
    with pytest.raises(ValueError, match=guess):
        methods.create("mgda", num_tasks=3, levle="representation")


def test_unknown_hyperparameter_lists_valid():
    with pytest.raises(ValueError) as exc:
        methods.create("deepchest", num_tasks=3, foo=1)
    assert str(exc.value) == (
        "method 'deepchest': unknown hyperparameter 'foo'; valid: decrease, increase, "
        "initial_weights, max_weight, min_weight, signal"
    )
    with pytest.raises(ValueError, match=r"method 'equal': unknown hyperparameter 'alpha'"):
        methods.create("equal", num_tasks=3, alpha=1)


def test_bad_signal_message():
    with pytest.raises(ValueError) as exc:
        methods.create("deepchest", num_tasks=3, signal="x")
    assert str(exc.value) == (
        "method 'deepchest': signal must be one of train_accuracy, val_accuracy, val_loss, got 'x'"
    )


@pytest.mark.parametrize(
    ("hp", "fragment"),
    [
        ({"increase": 1.0}, "increase must be a finite number > 1, got 1.0"),
        ({"increase": 1}, "increase must be a finite number > 1, got 1"),
        ({"increase": 0.5}, "increase"),
        ({"increase": "1.1"}, "increase must be a finite number > 1, got '1.1'"),
        ({"increase": True}, "increase"),
        ({"increase": NAN}, "increase"),
        ({"decrease": 1.0}, "decrease must be a finite number > 1"),
        ({"decrease": 0.95}, "decrease"),
        ({"max_weight": 0}, "max_weight must be a finite number > 0"),
        ({"max_weight": -1.0}, "max_weight"),
        ({"max_weight": math.inf}, "max_weight"),
        ({"min_weight": 0.0}, "min_weight must be None or a number in (0, max_weight=1.5]"),
        ({"min_weight": 1.6}, "min_weight must be None or a number in (0, max_weight=1.5]"),
        ({"min_weight": 1.1, "max_weight": 1.0}, "(0, max_weight=1]"),
        ({"signal": 3}, "signal must be one of"),
        ({"initial_weights": 5}, "initial_weights must be None or the path of a JSON file"),
    ],
)
def test_bad_deepchest_values(hp, fragment):
    with pytest.raises(ValueError) as exc:
        methods.create("deepchest", num_tasks=3, **hp)
    assert str(exc.value).startswith("method 'deepchest': ")
    assert fragment in str(exc.value)


def test_edge_values_accepted_and_resolved():
    m = methods.create("deepchest", num_tasks=2, increase=2, min_weight=1.5)  # min == max is OK
    hp = m.hyperparameters()
    assert hp == {
        "signal": "train_accuracy",
        "increase": 2.0,
        "decrease": 1.05,
        "max_weight": 1.5,
        "min_weight": 1.5,
        "initial_weights": None,
    }
    assert isinstance(hp["increase"], float)
    assert methods.create("equal", num_tasks=2).hyperparameters() == {}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_tasks": 0}, "num_tasks must be a positive int"),
        ({"num_tasks": 2.0}, "num_tasks must be a positive int"),
        ({"num_tasks": 3, "task_names": ["a", "b"]}, "task_names has 2 names but num_tasks is 3"),
        ({"num_tasks": 2, "task_names": ["a", "a"]}, "task_names must be unique"),
        ({"num_tasks": 2, "task_names": "ab"}, "task_names must be a sequence of str"),
    ],
)
@pytest.mark.parametrize("name", ["deepchest", "equal"])
def test_bad_construction(name, kwargs, fragment):
    with pytest.raises(ValueError, match=f"method '{name}': .*" + re.escape(fragment)):
        methods.create(name, **kwargs)


def test_describe():
    infos = methods.describe()
    assert [i.name for i in infos] == methods.available()
    by_name = {i.name: i for i in infos}
    assert by_name["equal"] == methods.MethodInfo(
        name="equal",
        level="loss",
        summary=by_name["equal"].summary,
        hyperparameters={},
        levels=("loss",),
        reference=by_name["equal"].reference,
        cost="1 backward",
    )
    assert by_name["mgda"].levels == ("parameters", "representation")
    assert by_name["mgda"].cost == "T backward passes (Jacobian)"
    assert by_name["mgda"].default_heads == "weighted" and by_name["upgrad"].default_heads == "own"
    assert by_name["famo"].cost == "1 backward + 1 forward"
    assert by_name["gradnorm"].cost == "1 backward + T short passes"
    assert by_name["sdmgrad"].cost.startswith("2 batches")
    assert "validation batch" in by_name["auto_lambda"].cost
    assert by_name["gradnorm"].levels == ("last_shared_layer",)
    dc = by_name["deepchest"]
    assert dc.level == "loss"
    assert dc.hyperparameters == {
        "signal": "train_accuracy",
        "increase": 1.1,
        "decrease": 1.05,
        "max_weight": 1.5,
        "min_weight": None,
        "initial_weights": None,
    }
    for info in infos:
        assert info.summary and "\n" not in info.summary
        # every method names its source: a paper (arXiv id or venue and year) and code
        assert re.search(
            r"(arXiv:\d{4}\.\d{4,5}|(ICLR|ICML|NeurIPS|CVPR) \d{4})", info.reference
        ), info.name


def test_epoch_stats_is_frozen_and_checked():
    s = stats([0.5, 0.5], val_acc=[0.5, 0.5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train_accuracy = torch.zeros(2)
    assert s.val_loss is None and s.num_tasks == 2
    with pytest.raises(ValueError, match="different lengths"):
        stats([0.5, 0.5], val_acc=[0.5])
    with pytest.raises(ValueError, match="1-D"):
        methods.EpochStats(train_accuracy=torch.zeros(2, 2), train_loss=torch.zeros(2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        methods.EpochStats(train_accuracy=[0.5], train_loss=torch.zeros(1))


# ============================================================================================
# Equal
# ============================================================================================


def test_equal_weights_are_ones():
    m = methods.create("equal", num_tasks=5)
    losses = torch.tensor([0.3, 2.0, 0.0, 7.0, 1.0], dtype=torch.float64)
    w = m.weights(losses)
    assert torch.equal(w, torch.ones(5))
    assert w.dtype == torch.float32
    m.on_epoch_end(stats([0.1, 0.2, 0.3, 0.4, 0.5]))  # no effect
    assert torch.equal(m.weights(losses), torch.ones(5))


def test_equal_engine_gradient_is_gradient_of_sum():
    model, make_losses = _toy_problem()
    m = methods.create("equal", num_tasks=3)
    w = engine.backward(m, make_losses())
    got = [p.grad.clone() for p in model.parameters()]
    expected = torch.autograd.grad(make_losses().sum(), list(model.parameters()))
    assert torch.equal(w, torch.ones(3))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


# ============================================================================================
# DeepChest: hand-computed trajectories
# ============================================================================================


def test_deepchest_starts_at_one():
    m = methods.create("deepchest", num_tasks=3)
    assert m.weights(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


def test_deepchest_default_trajectory():
    # Defaults: increase 1.1, decrease 1.05, max_weight 1.5. Start w = [1, 1, 1].
    m = methods.create("deepchest", num_tasks=3)
    signals = [
        [0.25, 0.5, 0.75],  # tau 0.5: t0 up, t1 tie -> down, t2 down
        [0.5, 0.25, 0.75],  # tau 0.5: t0 tie -> down, t1 up, t2 down
        [0.25, 0.5, 0.75],  # tau 0.5: t0 up, t1 down, t2 down
        [0.125, 0.125, 1.0],  # tau 1.25/3 = 0.4167: t0 up, t1 up, t2 down
    ]
    expected = [
        [1.1, 1 / 1.05, 1 / 1.05],  # [1.1, 0.952381, 0.952381]
        [1.1 / 1.05, 1.1 / 1.05, 1 / 1.05**2],  # [1.047619, 1.047619, 0.907029]
        [1.21 / 1.05, 1.1 / 1.05**2, 1 / 1.05**3],  # [1.152381, 0.997732, 0.863838]
        [1.331 / 1.05, 1.21 / 1.05**2, 1 / 1.05**4],  # [1.267619, 1.097506, 0.822702]
    ]
    assert expected[3] == pytest.approx([1.267619, 1.097506, 0.822702], abs=1e-6)
    assert_trajectory(run_epochs(m, signals), expected)
    assert m.epochs_seen == 4


def test_deepchest_cap_and_floor_trajectory():
    # increase 1.2, decrease 1.05, max_weight 1.5, min_weight 0.9. Start w = [1, 1, 1].
    m = methods.create("deepchest", num_tasks=3, increase=1.2, min_weight=0.9)
    signals = [[0.25, 0.5, 0.75]] * 4 + [[0.75, 0.25, 0.5]]
    expected = [
        [1.2, 0.952381, 0.952381],  # 1 * 1.2; 1 / 1.05
        [1.44, 0.907029, 0.907029],  # 1.2 * 1.2; 1 / 1.05^2
        [1.5, 0.9, 0.9],  # 1.728 capped at 1.5; 0.863838 floored at 0.9
        [1.5, 0.9, 0.9],  # 1.8 capped; 0.857143 floored
        # tau 0.5: t0 down 1.5 / 1.05 = 1.428571; t1 up 0.9 * 1.2 = 1.08; t2 tie -> 0.857 -> 0.9
        [1.428571, 1.08, 0.9],
    ]
    assert_trajectory(run_epochs(m, signals), expected)


def test_deepchest_default_hits_cap():
    # The lowest-accuracy task at defaults: 1.1, 1.21, 1.331, 1.4641, then 1.61051 -> 1.5.
    m = methods.create("deepchest", num_tasks=2)
    traj = run_epochs(m, [[0.25, 0.75]] * 6)
    assert [w[0] for w in traj] == pytest.approx([1.1, 1.21, 1.331, 1.4641, 1.5, 1.5], abs=1e-6)
    # The other task just decays: 1 / 1.05^k, no floor by default.
    assert [w[1] for w in traj] == pytest.approx([1 / 1.05**k for k in range(1, 7)], abs=1e-6)


def test_deepchest_ties_with_tau_are_down_weighted():
    m = methods.create("deepchest", num_tasks=4)
    # all equal: tau 0.5, nobody strictly below -> all / 1.05
    # then [0.5, 0.5, 0.25, 0.75]: tau 0.5 -> t0, t1 tie (down), t2 up, t3 down
    expected = [
        [0.952381, 0.952381, 0.952381, 0.952381],
        [0.907029, 0.907029, 1.047619, 0.907029],  # t2: 0.952381 * 1.1 = 1.047619
    ]
    assert_trajectory(run_epochs(m, [[0.5] * 4, [0.5, 0.5, 0.25, 0.75]]), expected)


def test_deepchest_val_loss_direction_is_flipped():
    m = methods.create("deepchest", num_tasks=3, signal="val_loss")
    signals = [
        [0.5, 0.25, 0.75],  # tau 0.5: t2 ABOVE -> up 1.1; t0 tie and t1 below -> down
        [1.0, 0.5, 0.0],  # tau 0.5: t0 above -> up; t1 tie -> down; t2 below -> down
    ]
    expected = [
        [0.952381, 0.952381, 1.1],
        [1.047619, 0.907029, 1.047619],  # 0.952381 * 1.1; 1 / 1.05^2; 1.1 / 1.05
    ]
    assert_trajectory(run_epochs(m, signals, key="val_loss"), expected)


def test_deepchest_val_accuracy_uses_val_split():
    m = methods.create("deepchest", num_tasks=3, signal="val_accuracy")
    m.on_epoch_end(stats([0.75, 0.5, 0.25], val_acc=[0.25, 0.5, 0.75]))
    assert m.weights(torch.zeros(3)).tolist() == pytest.approx([1.1, 0.952381, 0.952381], abs=1e-6)


@pytest.mark.parametrize("signal", ["val_accuracy", "val_loss"])
def test_deepchest_val_signal_without_val_split(signal):
    m = methods.create("deepchest", num_tasks=2, signal=signal)
    with pytest.raises(ValueError, match=f"signal '{signal}' needs validation statistics"):
        m.on_epoch_end(stats([0.5, 0.5]))


def test_deepchest_signal_wrong_length():
    m = methods.create("deepchest", num_tasks=3)
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        m.on_epoch_end(stats([0.5, 0.5]))


def test_deepchest_nan_signal_keeps_weight_and_is_left_out_of_tau():
    m = methods.create("deepchest", num_tasks=4)
    # tau over the three valid tasks = 1.5 / 3 = 0.5: t0 up, t1 tie -> down, t2 down, t3 kept.
    # (Counting the NaN task as 0 would give tau 0.375 and t0 a tie -> down.)
    # Then all NaN: nothing changes.
    expected = [
        [1.1, 0.952381, 0.952381, 1.0],
        [1.1, 0.952381, 0.952381, 1.0],
    ]
    assert_trajectory(run_epochs(m, [[0.375, 0.5, 0.625, NAN], [NAN] * 4]), expected)


def test_deepchest_weights_are_float32_on_losses_device_and_detached():
    m = methods.create("deepchest", num_tasks=2)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    w = m.weights(losses)
    assert w.dtype == torch.float32 and w.device == losses.device and not w.requires_grad
    w.mul_(100)  # the caller cannot change the method's state
    assert m.weights(losses).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"losses must be a Tensor of shape \(2,\)"):
        m.weights(torch.zeros(3))


# ============================================================================================
# DeepChest: initial weights from JSON
# ============================================================================================


def test_initial_weights_from_list(tmp_path):
    path = tmp_path / "acc.json"
    path.write_text(json.dumps([0.8, 0.6, 1.0]))
    m = methods.create("deepchest", num_tasks=3, initial_weights=str(path))
    # 1 + (1 - 0.8) / 2 = 1.1; 1 + 0.4 / 2 = 1.2; 1 + 0 / 2 = 1.0
    assert m.weights(torch.zeros(3)).tolist() == pytest.approx([1.1, 1.2, 1.0], abs=1e-6)
    # One epoch at [0.25, 0.5, 0.75]: 1.1 * 1.1 = 1.21; 1.2 / 1.05 = 1.142857; 1 / 1.05
    m.on_epoch_end(stats([0.25, 0.5, 0.75]))
    assert m.weights(torch.zeros(3)).tolist() == pytest.approx([1.21, 1.142857, 0.952381], abs=1e-6)
    assert m.hyperparameters()["initial_weights"] == str(path)


def test_initial_weights_from_dict_and_path_object(tmp_path):
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"b": 0.6, "c": 1, "a": 0}))  # any order, ints allowed
    m = methods.create("deepchest", num_tasks=3, task_names=["a", "b", "c"], initial_weights=path)
    assert m.weights(torch.zeros(3)).tolist() == pytest.approx([1.5, 1.2, 1.0], abs=1e-6)
    assert m.hyperparameters()["initial_weights"] == str(path)


@pytest.mark.parametrize(
    ("content", "task_names", "fragment"),
    [
        (None, None, "cannot read it"),
        ("[0.5, 0.5", None, "not valid JSON"),
        ("[0.5, 0.5]", None, "has 2 accuracies, expected 3"),
        ("[0.5, 0.5, 1.2]", None, "entry 2: accuracy must be a number in [0, 1], got 1.2"),
        ("[0.5, -0.1, 0.5]", None, "entry 1: accuracy must be a number in [0, 1]"),
        ('[0.5, "0.5", 0.5]', None, "entry 1: accuracy must be a number in [0, 1], got '0.5'"),
        ("[0.5, true, 0.5]", None, "entry 1"),
        ("[0.5, NaN, 0.5]", None, "entry 1"),
        ("0.5", None, "must hold a list of 3 accuracies or an object"),
        ('{"a": 0.5, "b": 0.5, "c": 0.5}', None, "no task_names were given"),
        ('{"a": 0.5, "b": 0.5, "x": 0.5}', ["a", "b", "c"], "unknown task name(s) ['x']"),
        ('{"a": 0.5, "b": 0.5}', ["a", "b", "c"], "missing task name(s) ['c']"),
        ('{"a": 0.5, "b": 0.5, "c": 2}', ["a", "b", "c"], "task 'c': accuracy must be"),
    ],
)
def test_bad_initial_weights_file(tmp_path, content, task_names, fragment):
    path = tmp_path / "acc.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as exc:
        methods.create("deepchest", num_tasks=3, task_names=task_names, initial_weights=str(path))
    message = str(exc.value)
    assert message.startswith(f"method 'deepchest': initial_weights file '{path}': ")
    assert fragment in message


# ============================================================================================
# Checkpointing
# ============================================================================================


def test_deepchest_state_dict_round_trip_continues_trajectory(tmp_path):
    hp = {"increase": 1.2, "min_weight": 0.9}
    signals = [[0.25, 0.5, 0.75]] * 4 + [[0.75, 0.25, 0.5]]
    original = methods.create("deepchest", num_tasks=3, **hp)
    run_epochs(original, signals[:2])

    path = tmp_path / "method.pt"
    torch.save(original.state_dict(), path)
    restored = methods.create("deepchest", num_tasks=3, **hp)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.epochs_seen == 2

    a = run_epochs(original, signals[2:])
    b = run_epochs(restored, signals[2:])
    assert a == b
    # Same as the uninterrupted hand-computed trajectory (test_deepchest_cap_and_floor_trajectory)
    assert_trajectory(b, [[1.5, 0.9, 0.9], [1.5, 0.9, 0.9], [1.428571, 1.08, 0.9]])


def test_equal_state_dict_round_trip(tmp_path):
    path = tmp_path / "method.pt"
    torch.save(methods.create("equal", num_tasks=2).state_dict(), path)
    m = methods.create("equal", num_tasks=2)
    m.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(m.weights(torch.zeros(2)), torch.ones(2))


def test_load_state_dict_mismatch():
    state = methods.create("deepchest", num_tasks=3).state_dict()
    with pytest.raises(ValueError, match="state_dict of method 'deepchest'"):
        methods.create("equal", num_tasks=3).load_state_dict(state)
    with pytest.raises(ValueError, match="for 3 tasks into a method for 2 tasks"):
        methods.create("deepchest", num_tasks=2).load_state_dict(state)


# ============================================================================================
# Property: permuting the tasks permutes DeepChest's weights
# ============================================================================================


@pytest.mark.parametrize("seed", range(25))
def test_deepchest_is_permutation_equivariant(seed):
    rng = random.Random(seed)
    num_tasks = rng.randint(2, 8)
    signal = rng.choice(["train_accuracy", "val_loss"])
    hp = {"signal": signal, "increase": rng.choice([1.1, 1.3]), "max_weight": 1.5}
    if rng.random() < 0.5:
        hp["min_weight"] = 0.8
    # Dyadic values make ties with tau frequent (and exact); NaN for tasks without labels.
    values = [0.0, 0.25, 0.5, 0.75, 1.0, NAN]
    epochs = [[rng.choice(values) for _ in range(num_tasks)] for _ in range(5)]
    perm = list(range(num_tasks))
    rng.shuffle(perm)

    key = "val_loss" if signal == "val_loss" else "train_acc"
    plain = run_epochs(methods.create("deepchest", num_tasks=num_tasks, **hp), epochs, key)
    permuted_epochs = [[s[p] for p in perm] for s in epochs]
    permuted = run_epochs(
        methods.create("deepchest", num_tasks=num_tasks, **hp), permuted_epochs, key
    )
    for w, wp in zip(plain, permuted, strict=True):
        assert wp == [w[p] for p in perm]


# ============================================================================================
# Engine
# ============================================================================================


def _toy_problem():
    """A tiny shared-trunk model and a closure computing its 3 per-task losses (with grad)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(8, 4)
    y = torch.randn(8, 3)

    def make_losses():
        return ((model(x) - y) ** 2).mean(dim=0)

    return model, make_losses


class Fixed(LossWeighting):
    """Test method: fixed weights; records the losses it was shown."""

    name = "fixed"
    summary = "test"

    def __init__(self, w):
        super().__init__(len(w))
        self.w = torch.tensor(w)
        self.seen = []

    def compute_weights(self, losses):
        self.seen.append(losses.clone())
        return self.w


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _reference_grads(model, make_losses, w, factor=1.0):
    objective = factor * (torch.tensor(w) * make_losses()).sum()
    return torch.autograd.grad(objective, list(model.parameters()))


def test_engine_gradient_matches_weighted_sum():
    model, make_losses = _toy_problem()
    w = [0.5, 2.0, 1.25]
    method = Fixed(w)
    returned = engine.backward(method, make_losses())
    assert torch.equal(returned, torch.tensor(w))
    assert returned.dtype == torch.float32
    for g, e in zip(_grads(model), _reference_grads(model, make_losses, w), strict=True):
        torch.testing.assert_close(g, e)


def test_engine_applies_reduce_to_detached_copy():
    model, make_losses = _toy_problem()
    method = Fixed([1.0, 1.0, 1.0])
    losses = make_losses()
    before = losses.detach().clone()
    engine.backward(method, losses, reduce=lambda t: t.mul_(2))  # an in-place "all-reduce"
    torch.testing.assert_close(method.seen[0], 2 * before)
    assert torch.equal(losses.detach(), before)  # the losses themselves were not touched


def test_engine_reduce_output_drives_the_weights():
    model, make_losses = _toy_problem()
    method = methods.create("equal", num_tasks=3)
    seen = []

    def reduce(t):
        seen.append(t)
        assert not t.requires_grad
        return t + 1

    engine.backward(method, make_losses(), reduce=reduce)
    assert len(seen) == 1


def test_engine_applies_scale():
    model, make_losses = _toy_problem()
    w = [0.5, 2.0, 1.25]
    returned = engine.backward(Fixed(w), make_losses(), scale=lambda o: o * 3)
    assert torch.equal(returned, torch.tensor(w))  # the weights are not scaled
    expected = _reference_grads(model, make_losses, w, factor=3.0)
    for g, e in zip(_grads(model), expected, strict=True):
        torch.testing.assert_close(g, e)


def test_engine_with_deepchest_weights():
    model, make_losses = _toy_problem()
    method = methods.create("deepchest", num_tasks=3)
    method.on_epoch_end(stats([0.25, 0.5, 0.75]))
    w = engine.backward(method, make_losses())
    assert w.tolist() == pytest.approx([1.1, 0.952381, 0.952381], abs=1e-6)
    for g, e in zip(_grads(model), _reference_grads(model, make_losses, w.tolist()), strict=True):
        torch.testing.assert_close(g, e)


def test_engine_rejects_unknown_levels_and_a_missing_model():
    class Elsewhere(methods.Method):
        name = "elsewhere-test"
        level = "activations"
        summary = "test"

    _, make_losses = _toy_problem()
    with pytest.raises(NotImplementedError, match="unknown level 'activations'"):
        engine.backward(Elsewhere(3), make_losses())
    with pytest.raises(ValueError, match="'mgda' needs the model"):
        engine.backward(methods.create("mgda", 3, level="representation"), make_losses())


def test_engine_checks_losses():
    method = methods.create("equal", num_tasks=3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        engine.backward(method, torch.zeros(2, requires_grad=True))
    with pytest.raises(ValueError, match="do not require grad"):
        engine.backward(method, torch.zeros(3))
