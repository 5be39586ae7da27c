"""What every gradient-level method shares: ``update_every``, CR-MOGM's ``ema``, the present-task
restriction of the stateless aggregators, and the two-batch path (engine and training step).

References: ``torchjd.aggregation.CRMOGMWeighting`` (torchjd 0.18.0) for the average; the rest is
checked against plain autograd on a toy network.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchjd.aggregation import CRMOGMWeighting, UPGradWeighting

import methods
from harness.measure import StepTimer
from harness.trainloop import Collective, TrainStep
from methods import engine
from methods.gradient import GradientAggregator
from methods.upgrad import upgrad_weights
from tests.jacobians import make_jacobian
from tests.toy_nets import tanh_net

F64 = torch.float64


def toy(seed: int = 1):
    torch.manual_seed(seed)
    return tanh_net().double()


def batch(seed: int, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 5, generator=g, dtype=F64)
    return x, torch.randn(size, 3, generator=g, dtype=F64)


def task_losses(net, x, y):
    rep, logits = net(x)
    return rep, ((logits - y) ** 2).mean(0)


def grads(net) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


class Spy:
    """Counts a method's ``aggregate`` calls (the Jacobian steps)."""

    def __init__(self, method: GradientAggregator):
        self.calls = 0
        inner = method.aggregate

        def aggregate(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        method.aggregate = aggregate


# --------------------------------------------------------------------------------------------
# update_every
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", ["weighted", "own"])
def test_update_every_reuses_the_weights_as_one_weighted_backward(heads):
    """Steps 1 and 4 build J and aggregate; steps 2 and 3 back-propagate sum_t w_t L_t with
    step 1's weights (heads: w_t or 1), exactly what autograd gives for that objective."""
    method = methods.create("mgda", 3, update_every=3)
    spy = Spy(method)
    net = toy()
    first = None
    for step in range(4):
        x, y = batch(step)
        net.zero_grad(set_to_none=True)
        _, losses = task_losses(net, x, y)
        w = engine.backward(method, losses, model=net, heads=heads)
        assert spy.calls == (1 if step < 3 else 2)
        if step == 0:
            first = w.clone()
        elif step < 3:
            assert torch.equal(w, first)
            expected = toy()
            expected.load_state_dict(net.state_dict())
            _, ref = task_losses(expected, x, y)
            trunk = sum(first[t].double() * ref[t] for t in range(3))
            trunk_grads = torch.autograd.grad(
                trunk, list(expected.trunk.parameters()), retain_graph=True
            )
            coeff = first.double() if heads == "weighted" else torch.ones(3, dtype=F64)
            head_grads = [
                g
                for t in range(3)
                for g in torch.autograd.grad(
                    coeff[t] * ref[t], list(expected.heads[t].parameters()), retain_graph=True
                )
            ]
            want = torch.cat([g.reshape(-1) for g in (*trunk_grads, *head_grads)])
            torch.testing.assert_close(grads(net), want, rtol=1e-12, atol=1e-14)


def test_update_every_computes_anew_when_a_task_comes_back():
    """A task absent when the weights were computed (weight 0) and present now forces a new
    Jacobian step instead of training it with weight 0."""
    method = methods.create("upgrad", 3, update_every=5)
    spy = Spy(method)
    net = toy()
    presence = [[True, False, True], [True, False, True], [True, True, True], [True, True, True]]
    for step, flags in enumerate(presence):
        x, y = batch(step)
        _, losses = task_losses(net, x, y)
        losses = losses * torch.tensor(flags, dtype=F64)  # an absent task's loss is 0
        engine.backward(method, losses, model=net, present=torch.tensor(flags))
    assert spy.calls == 2  # steps 1 and 3; steps 2 and 4 reuse


def test_update_every_checkpoint_round_trip_mid_cycle_is_bit_identical():
    a = methods.create("pcgrad", 3, update_every=4, ema=0.5)
    net_a = toy()
    for step in range(2):
        _, losses = task_losses(net_a, *batch(step))
        engine.backward(a, losses, model=net_a)
    b = methods.create("pcgrad", 3, update_every=4, ema=0.5)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    net_b = copy.deepcopy(net_a)
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    for step in range(2, 7):
        out = []
        for m, net in ((a, net_a), (b, net_b)):
            torch.set_rng_state(rng)
            net.zero_grad(set_to_none=True)
            _, losses = task_losses(net, *batch(step))
            out.append((engine.backward(m, losses, model=net), grads(net)))
        rng = torch.get_rng_state()
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_update_every_is_refused(bad):
    with pytest.raises(ValueError, match=r"^method 'mgda': update_every must be a positive int"):
        methods.create("mgda", 3, update_every=bad)


# --------------------------------------------------------------------------------------------
# ema (CR-MOGM)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("t", [1, 3, 8])
def test_ema_matches_torchjd_cr_mogm_over_steps(alpha, t):
    ours = methods.create("upgrad", t, ema=alpha)
    ref = CRMOGMWeighting(UPGradWeighting(), alpha=alpha)
    for step in range(5):
        jac = make_jacobian("correlated" if step % 2 else "scaled", t, seed=step)
        direction, w = ours.aggregate(jac, torch.ones(t, dtype=F64))
        expected = ref(jac @ jac.T)
        torch.testing.assert_close(w, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(direction, w @ jac, rtol=1e-10, atol=1e-12)


def test_ema_by_hand_two_steps():
    """lambda_1 = w_1; lambda_2 = a lambda_1 + (1 - a) w_2 (two orthogonal unit rows: UPGrad's
    weights are the mean's, 1/2 each; then rows [1, 0] and [0, 3]: still 1/2 each, since
    orthogonal rows never conflict), so with a = 0.25: [0.5, 0.5] both steps."""
    m = methods.create("upgrad", 2, ema=0.25, reg_eps=1e-12)
    _, w1 = m.aggregate(torch.eye(2, dtype=F64), torch.ones(2, dtype=F64))
    _, w2 = m.aggregate(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=F64), torch.ones(2, dtype=F64))
    torch.testing.assert_close(w1, torch.full((2,), 0.5, dtype=F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(w2, torch.full((2,), 0.5, dtype=F64), rtol=1e-6, atol=0)
    # and a changing weight: MGDA on [1,0],[0,1] gives 1/2 each; on [1,0],[0,3] it gives
    # w = (9/10, 1/10) (min-norm point of the segment); averaged with a = 0.25:
    m = methods.create("mgda", 2, ema=0.25)
    m.aggregate(torch.eye(2, dtype=F64), torch.ones(2, dtype=F64))
    _, w = m.aggregate(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=F64), torch.ones(2, dtype=F64))
    torch.testing.assert_close(w, 0.25 * 0.5 + 0.75 * torch.tensor([0.9, 0.1], dtype=F64))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", float("nan")])
def test_bad_ema_is_refused(bad):
    with pytest.raises(ValueError, match=r"^method 'upgrad': ema must be a finite number"):
        methods.create("upgrad", 3, ema=bad)


# --------------------------------------------------------------------------------------------
# Present tasks: a stateless aggregator runs on the labelled tasks' rows only
# --------------------------------------------------------------------------------------------


def test_mgda_does_not_stall_when_a_task_is_absent():
    """With a zero row, the min-norm point of the hull is 0 (no step at all); restricted to the
    present tasks it is the min-norm point of theirs."""
    jac = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=F64)
    losses = torch.tensor([0.5, 0.0, 0.7], dtype=F64)
    m = methods.create("mgda", 3)
    direction, w = m.aggregate(jac, losses, present=torch.tensor([True, False, True]))
    # min over a in [0, 1] of |a e1 + (1 - a) 2 e2|^2: a = 4/5
    torch.testing.assert_close(w, torch.tensor([0.8, 0.0, 0.2], dtype=F64))
    torch.testing.assert_close(direction, torch.tensor([0.8, 0.4], dtype=F64))
    none = m.aggregate(jac, losses, present=torch.zeros(3, dtype=torch.bool))
    assert not none[0].any() and not none[1].any()


STATELESS = [
    "upgrad", "dualproj", "imtl_g", "cagrad", "aligned_mtl", "nash_mtl", "mgda", "fairgrad",
    "config", "pcgrad", "graddrop",
]  # fmt: skip


def test_every_stateless_aggregator_is_checked_below():
    for name in methods.available():
        method = methods.create(name, 3)
        if (
            isinstance(method, GradientAggregator)
            and not method.state_dict()["state"]
            and type(method).compute_present is GradientAggregator.compute_present
        ):
            assert name in STATELESS, name


@pytest.mark.parametrize("name", STATELESS)
def test_absent_rows_give_the_weights_of_the_present_tasks_alone(name):
    jac = make_jacobian("correlated", 5, seed=2)
    present = torch.tensor([True, False, True, True, False])
    masked = jac * present[:, None]
    losses = torch.rand(5, dtype=F64) + 0.1
    torch.manual_seed(3)  # the random ones (PCGrad, GradDrop) draw the same for both
    _, full = methods.create(name, 5).aggregate(masked, losses * present, present=present)
    torch.manual_seed(3)
    _, alone = methods.create(name, 3).aggregate(jac[present], losses[present])
    assert torch.equal(full[~present], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(full[present], alone, rtol=1e-9, atol=1e-12)


def test_upgrad_weights_function_is_the_class():  # the cache stores what compute gave
    jac = make_jacobian("random", 4)
    _, w = methods.create("upgrad", 4).aggregate(jac, torch.ones(4, dtype=F64))
    torch.testing.assert_close(w, upgrad_weights(jac @ jac.T), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Two mini-batches per step
# --------------------------------------------------------------------------------------------


class HalfEach(GradientAggregator):
    """Test pair method: w = 1 for every task, so the direction is the gradient of the mean of
    the two batches' summed losses; records the cross matrix it was given."""

    name = "half_each"
    summary = "test only"
    batches_per_step = 2
    AGGREGATION_LEVELS = ("parameters",)

    def pair_weights(self, cross, present):
        self.cross = cross.clone()
        return torch.ones(self.num_tasks, dtype=cross.dtype)


def test_two_batch_step_is_the_gradient_of_the_mean_of_both_batches():
    net, ref = toy(), toy()
    (x1, y1), (x2, y2) = batch(0), batch(1)
    method = HalfEach(3)
    _, first = task_losses(net, x1, y1)
    _, second = task_losses(net, x2, y2)
    w = engine.backward(method, first, second=second, model=net)
    assert torch.equal(w, torch.ones(3))
    _, a = task_losses(ref, x1, y1)
    _, b = task_losses(ref, x2, y2)
    ((a.sum() + b.sum()) / 2).backward()
    torch.testing.assert_close(grads(net), grads(ref), rtol=1e-12, atol=1e-14)
    # A = J_1 J_2^T from the two batches' Jacobians at the shared parameters
    shared = list(ref.trunk.parameters())
    _, a = task_losses(ref, x1, y1)
    _, b = task_losses(ref, x2, y2)
    j1 = engine.shared_jacobian(a, shared)
    j2 = engine.shared_jacobian(b, shared)
    torch.testing.assert_close(method.cross, j1 @ j2.T, rtol=1e-12, atol=1e-14)


def test_two_batch_method_needs_the_second_batch_and_others_refuse_it():
    net = toy()
    _, losses = task_losses(net, *batch(0))
    with pytest.raises(ValueError, match="two mini-batches per step"):
        engine.backward(HalfEach(3), losses, model=net)
    with pytest.raises(ValueError, match="one mini-batch per step"):
        engine.backward(methods.create("mgda", 3), losses, model=net, second=losses)


def test_train_step_splits_the_batch_into_two_forward_passes():
    """TrainStep gives a two-batch method the halves of what the loop drew (2 x batch_size
    images), each its own forward pass, and returns the mean of the halves' losses."""

    class Net(type(toy())):
        def forward(self, x):
            self.sizes.append(len(x))
            return super().forward(x)

    torch.manual_seed(1)
    net = tanh_net()
    net.__class__ = Net
    net.sizes = []
    method = HalfEach(3)
    step = TrainStep(
        net,
        net,
        method,
        torch.optim.SGD(net.parameters(), lr=0.0),
        collective=Collective(),
        timer=StepTimer(torch.device("cpu")),
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), (torch.rand(8, 3, generator=g) < 0.5).float()
    m = torch.ones(8, 3, dtype=torch.bool)
    losses, weights, logits = step(x, y, m)
    assert net.sizes == [4, 4] and logits.shape == (8, 3)
    from deepchest.metrics import masked_task_losses

    with torch.no_grad():
        halves = [masked_task_losses(net(x[s])[1], y[s], m[s]) for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(losses, (halves[0] + halves[1]) / 2)


# --------------------------------------------------------------------------------------------
# What the heads get by default: as in each method's reference code (docs/methods.md, "Heads")
# --------------------------------------------------------------------------------------------

#: from the authors' training code (the survey's sources are in docs/methods.md): these
#: back-propagate sum_t w_t L_t through the whole network; every other gradient-level method
#: back-propagates each task's own loss into its head and overwrites only the shared gradients
WEIGHTED_HEADS = {"mgda", "nash_mtl", "excess_mtl", "gradnorm"}


def test_default_heads_follow_the_reference_code():
    for name in methods.available():
        method = methods.create(name, 3)
        if method.level == "loss":
            continue
        expected = "weighted" if name in WEIGHTED_HEADS else "own"
        assert method.default_heads == expected, name


@pytest.mark.parametrize(("name", "weighted"), [("pcgrad", False), ("mgda", True)])
def test_engine_gives_the_heads_what_the_method_defaults_to(name, weighted):
    """Without ``heads=``: PCGrad's heads get their own loss's gradient (TorchJD's mtl_backward,
    LibMTL), MGDA's w_t times it (Sener & Koltun's script)."""
    net, ref = toy(), toy()
    x, y = batch(3)
    _, losses = task_losses(net, x, y)
    w = engine.backward(methods.create(name, 3), losses, model=net).double()
    _, ref_losses = task_losses(ref, x, y)
    for t in range(3):
        own = torch.autograd.grad(ref_losses[t], list(ref.heads[t].parameters()), retain_graph=True)
        coeff = w[t] if weighted else 1.0
        for p, g in zip(net.heads[t].parameters(), own, strict=True):
            # (the returned weights are float32: compare at its precision)
            torch.testing.assert_close(p.grad, coeff * g, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------
# A method whose update is not weights @ J, at the representation
# --------------------------------------------------------------------------------------------


class _Twin:
    """Two workers holding the same batch, seen from rank 0."""

    world_size, rank = 2, 0

    def all_reduce_mean(self, tensor):
        return tensor

    def all_gather_cat(self, tensor):
        return torch.cat([tensor, tensor])


@pytest.mark.parametrize("sync", [None, _Twin()], ids=["one worker", "two workers"])
def test_graddrop_at_the_representation_applies_its_own_direction(sync):
    """The trunk gets the back-propagation of GradDrop's masked sum at z (the engine must not
    replace it by weights @ J)."""
    from methods.graddrop import graddrop

    net, ref = toy(), toy()
    x, y = batch(4)
    rep, losses = task_losses(net, x, y)
    torch.manual_seed(11)
    engine.backward(
        methods.create("graddrop", 3, level="representation"),
        losses,
        model=net,
        representation=rep,
        sync=sync,
    )
    rep_ref, ref_losses = task_losses(ref, x, y)
    local = engine.shared_jacobian(ref_losses, [rep_ref])
    union = local if sync is None else torch.cat([local, local], 1) / 2
    torch.manual_seed(11)
    direction, _ = graddrop(union, leak=0.0)
    if sync is not None:
        direction = direction[: local.shape[1]] * 2
    expected = torch.autograd.grad(
        rep_ref, list(ref.trunk.parameters()), grad_outputs=direction.view_as(rep_ref)
    )
    for p, g in zip(net.trunk.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["graddrop", "moco", "db_mtl"])
@pytest.mark.parametrize("key", ["ema", "update_every"])
def test_methods_whose_update_is_not_a_weighted_sum_refuse_ema_and_update_every(name, key):
    with pytest.raises(ValueError, match=rf"^method '{name}': {key} must be .* not a weighted sum"):
        methods.create(name, 3, **{key: 0.5 if key == "ema" else 3})


@pytest.mark.parametrize("path", ["parameters", "representation", "reuse"])
def test_nash_mtl_heads_get_the_unclipped_alpha_and_the_trunk_is_clipped(path):
    """As the authors' NashMTL.backward: backward of sum_t alpha_t L_t, then the shared
    gradient clipped to max_norm (also at the representation and in update_every's reuse
    steps); the heads keep alpha_t grad L_t."""
    from methods.gradient import solver_gramian
    from methods.nash_mtl import nash_mtl_weights

    net, ref = toy(), toy()
    x, y = batch(5)
    level = "representation" if path == "representation" else "parameters"
    method = methods.create("nash_mtl", 3, level=level, max_norm=0.01, update_every=2)
    rep, losses = task_losses(net, x, y)
    if path == "reuse":  # a first step fills the cache; the second (measured) reuses it
        engine.backward(method, losses, model=net, representation=rep)
        net.zero_grad(set_to_none=True)
        rep, losses = task_losses(net, x, y)
    w = engine.backward(method, losses, model=net, representation=rep).double()
    rep_ref, ref_losses = task_losses(ref, x, y)
    if path != "reuse":
        at = rep_ref if level == "representation" else list(ref.trunk.parameters())
        jac = engine.shared_jacobian(ref_losses, at if isinstance(at, list) else [at])
        alpha = nash_mtl_weights(solver_gramian(jac), max_norm=0.0)
        torch.testing.assert_close(w, alpha, rtol=1e-6, atol=0)  # unclipped
    for t in range(3):
        own = torch.autograd.grad(ref_losses[t], list(ref.heads[t].parameters()), retain_graph=True)
        for p, g in zip(net.heads[t].parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, w[t] * g, rtol=1e-6, atol=1e-12)
    trunk = torch.cat([p.grad.reshape(-1) for p in net.trunk.parameters()])
    # (clip_grad_norm_ divides by the norm + 1e-6)
    torch.testing.assert_close(float(trunk.norm()), 0.01, rtol=1e-5, atol=0)
