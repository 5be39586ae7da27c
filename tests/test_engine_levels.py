"""The engine's representation and last-shared-layer levels, and every level under data
parallelism: two gloo workers give the same update as one process on the union of the batches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchjd.aggregation import MGDA as ReferenceMGDA
from torchjd.aggregation import PCGrad as ReferencePCGrad

import methods
from harness.measure import StepTimer
from harness.trainloop import Collective, TorchCollective, TrainStep
from methods import engine
from tests.toy_nets import ToyNet, tanh_net


def make_net(seed: int = 1, tasks: int = 3) -> ToyNet:
    torch.manual_seed(seed)
    return tanh_net(tasks).double()


def batch(seed: int = 0, n: int = 16, tasks: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(n, tasks, generator=g) > 0.5).double()
    return x, y


def task_losses(net, x, y):
    rep, logits = net(x)
    return rep, ((logits - y) ** 2).mean(0)


def representation_jacobian(net, x, y) -> torch.Tensor:
    rep, losses = task_losses(net, x, y)
    rows = [torch.autograd.grad(losses[t], rep, retain_graph=True)[0].flatten() for t in range(3)]
    return torch.stack(rows)


# ============================================================================================
# Representation level
# ============================================================================================


def test_mgda_ub_keeps_every_sample_and_matches_torchjd_at_the_representation():
    net, twin = make_net(), make_net()
    x, y = batch()
    method = methods.create("mgda", 3, level="representation")
    shapes = []
    aggregate = method.aggregate
    method.aggregate = lambda j, losses, **kw: (
        shapes.append(tuple(j.shape)),
        aggregate(j, losses, **kw),
    )[1]

    rep, losses = task_losses(net, x, y)
    weights = engine.backward(method, losses, model=net, representation=rep)
    assert shapes == [(3, 16 * 4)]  # T x (B * d): never summed over the batch

    j = representation_jacobian(twin, x, y)
    direction = ReferenceMGDA(epsilon=1e-12, max_iters=20000)(j)  # Frank-Wolfe run to the end
    rep, _ = task_losses(twin, x, y)
    expected = torch.autograd.grad(rep, list(twin.trunk.parameters()), direction.view_as(rep))
    for p, e in zip(net.trunk.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-8)
    # heads (weighted): w_t times their own loss's gradient
    _, losses = task_losses(twin, x, y)
    for t in range(3):
        (g,) = torch.autograd.grad(losses[t], twin.heads[t].weight, retain_graph=True)
        torch.testing.assert_close(net.heads[t].weight.grad, weights[t].double() * g)


def test_pcgrad_at_the_representation_matches_torchjd_under_the_same_seed():
    net, twin = make_net(), make_net()
    x, y = batch(3)
    method = methods.create("pcgrad", 3, level="representation")
    rep, losses = task_losses(net, x, y)
    torch.manual_seed(7)
    engine.backward(method, losses, model=net, representation=rep, heads="own")
    torch.manual_seed(7)
    direction = ReferencePCGrad()(representation_jacobian(twin, x, y))
    rep, _ = task_losses(twin, x, y)
    expected = torch.autograd.grad(rep, list(twin.trunk.parameters()), direction.view_as(rep))
    for p, e in zip(net.trunk.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-9)
    _, losses = task_losses(twin, x, y)
    (g,) = torch.autograd.grad(losses[1], twin.heads[1].bias)  # heads="own": unweighted
    torch.testing.assert_close(net.heads[1].bias.grad, g)


def test_representation_level_needs_the_representation():
    net = make_net()
    x, y = batch()
    _, losses = task_losses(net, x, y)
    with pytest.raises(ValueError, match="needs the shared representation"):
        engine.backward(methods.create("mgda", 3, level="representation"), losses, model=net)


def test_amp_scale_is_divided_out_at_the_representation():
    net, twin = make_net(), make_net()
    x, y = batch(5)
    for model, scale in ((net, None), (twin, lambda t: t * 512)):
        rep, losses = task_losses(model, x, y)
        engine.backward(
            methods.create("mgda", 3, level="representation"),
            losses,
            model=model,
            representation=rep,
            scale=scale,
        )
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, 512 * p.grad)


# ============================================================================================
# Data parallelism: 2 gloo workers == 1 process on the union of the batches
# ============================================================================================

DDP_CASES = [
    ("equal", {}),
    ("uncertainty", {}),
    ("famo", {}),
    ("pcgrad", {}),
    ("mgda", {}),
    ("mgda", {"level": "representation"}),
    ("upgrad", {}),
    ("imtl_g", {"level": "representation"}),
    ("gradnorm", {}),
    # the paths added with the newer methods: two batches per step (each worker's halves),
    # a method's own direction at the representation, Auto-Lambda's look-ahead, CR-MOGM's
    # average, update_every's reuse steps, and state kept per coordinate of J
    ("sdmgrad", {}),
    ("modo", {}),
    ("graddrop", {"level": "representation"}),
    ("auto_lambda", {"lr": 0.05}),
    ("mgda", {"ema": 0.5}),
    ("upgrad", {"update_every": 2}),
    ("moco", {}),
    ("db_mtl", {}),
    ("excess_mtl", {}),
    ("gradvac", {}),
    ("pcd", {}),
]
STEPS = 3


def _train(method_name, params, collective, model_of, x, y, heads, validation):
    """``STEPS`` TrainSteps; returns the final parameters and the weights of each step.
    ``validation``: the (x, y) of Auto-Lambda's look-ahead batch."""
    net = make_net()
    model = model_of(net)
    method = methods.create(method_name, 3, **params)
    groups = [{"params": list(net.parameters())}]
    if (group := method.optimizer_group()) is not None:
        groups.append(group)
    # momentum: the look-ahead reads SGD's buffers
    opt = torch.optim.SGD(groups, lr=0.3, momentum=0.5)
    xv, yv = validation
    step = TrainStep(
        net,
        model,
        method,
        opt,
        collective=collective,
        timer=StepTimer(torch.device("cpu")),
        heads=heads,
        validation_batch=lambda: (xv, yv, torch.ones_like(yv, dtype=torch.bool)),
    )
    torch.manual_seed(11)  # the same random draws (PCGrad's orders) on every worker
    mask = torch.ones_like(y, dtype=torch.bool)
    weights = [step(x, y, mask)[1] for _ in range(STEPS)]
    return [p.detach().clone() for p in net.parameters()], torch.stack(weights)


def _ddp_worker(rank: int, world: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        coll = TorchCollective()
        x, y = batch()
        xv, yv = batch(9, n=8)
        half = slice(rank * 8, (rank + 1) * 8)
        out = {}
        for i, (name, params) in enumerate(DDP_CASES):
            heads = "own" if i % 2 else "weighted"
            out[i] = _train(
                name,
                params,
                coll,
                lambda n: coll.wrap(n, torch.device("cpu")),
                x[half],
                y[half],
                heads,
                (xv[rank * 4 : (rank + 1) * 4], yv[rank * 4 : (rank + 1) * 4]),
            )
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    results = mp.Manager().dict()
    init = tmp_path_factory.mktemp("ddp") / "init"
    mp.spawn(_ddp_worker, args=(2, str(init), results), nprocs=2, join=True)
    os.environ.pop("MASTER_ADDR", None)
    return dict(results)


@pytest.mark.parametrize(
    "case",
    range(len(DDP_CASES)),
    ids=[f"{n}-{','.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p in DDP_CASES],
)
def test_two_workers_update_like_one_process_on_the_union(ddp_results, case):
    name, params = DDP_CASES[case]
    heads = "own" if case % 2 else "weighted"
    x, y = batch()
    if {i.name: i for i in methods.describe()}[name].batches_per_step == 2:
        # each worker splits its 8 images into two batches of 4: the union's first batch is
        # both workers' first halves, its second both workers' second halves
        order = [*range(0, 4), *range(8, 12), *range(4, 8), *range(12, 16)]
        x, y = x[order], y[order]
    expected, expected_weights = _train(
        name, params, Collective(), lambda n: n, x, y, heads, batch(9, n=8)
    )
    for rank in (0, 1):
        got, weights = ddp_results[rank][case]
        torch.testing.assert_close(
            weights.double(), expected_weights.double(), rtol=1e-5, atol=1e-7
        )
        for p, e in zip(got, expected, strict=True):
            torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-9)
    # the parameters moved, so the comparison means something
    assert not torch.equal(expected[0], make_net().trunk[0].weight)
