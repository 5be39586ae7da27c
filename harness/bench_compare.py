"""``harness bench --compare torchjd``: a gradient-level step here against TorchJD 0.18 and
against T plain backward passes, timed side by side in one process.

For each gradient method (``--methods``, default ``mgda upgrad pcgrad``) these routes run on
their own copy of the same network (``MultiTaskNet``, the same initial weights, as
``harness.bench.build_step`` builds it) and the same synthetic batch (``bench.synthetic_batch``);
every route is one whole training step: forward, per-task losses, the update, and the
optimizer step (``--optimizer``'s, Adam by default; included in every route, equal's too):

* ``equal``: equal weighting through ``TrainStep`` (loss level, one backward: the baseline);
* ``ours``: this project's parameter-level step through the training loop's own ``TrainStep``
  (``engine.backward``: T retained backward passes fill ``J`` at the shared parameters, the
  method aggregates it; the heads get what the method's ``default_heads`` says: their own
  loss's gradient, ``own``, or ``w_t`` times it, ``weighted``);
* ``torchjd autojac``: ``torchjd.autojac.mtl_backward(losses, features=representation,
  tasks_params=heads, shared_params=trunk)`` (its Jacobian at the trunk in one vmapped pass)
  then ``jac_to_grad(trunk, aggregator)``; ``torchjd autojac+gram`` passes
  ``optimize_gramian_computation=True`` (the Gramian summed per parameter, no concatenated
  ``J``; Gramian-based aggregators only). ``retain_graph=True``: the network computes the T
  heads as one fused product, a node every task's backward passes through. TorchJD gives head
  ``t`` the gradient of its own loss (``own``); for ``weighted`` heads their ``.grad`` are then
  scaled by the returned weights (a few tiny multiplications), so both compute the same update;
* ``torchjd autogram``: ``torchjd.autogram.Engine(trunk, batch_dim=None)`` computes the Gramian
  of the losses' Jacobian at the trunk without storing ``J``, the aggregator's Gramian weighting
  gives ``w``, and ``losses.backward(w)`` back-propagates the weighted losses (for ``own`` heads:
  the backward of ``sum_t L_t`` into the heads, then that of ``w^T L`` into the trunk).
  Gramian-based aggregators only; ``batch_dim=None`` since BatchNorm mixes the samples;
* ``T retained passes``: ``torch.autograd.grad(losses[t], trunk, retain_graph=True)`` for each
  task, stacked into ``J``, this project's aggregator, the direction written into ``.grad``,
  one backward of ``sum_t c_t L_t`` into the heads (``c = w`` or 1, as ours): the naive route of
  LibMTL and PCGrad ports.

The routes take turns step by step (round-robin), so a change in the machine's load hits them
all alike; on a shared machine the minimum over rounds is the steadier figure. Per route:
``step_time_ms`` (median over rounds) and ``step_time_min_ms`` (minimum), their ratios to
equal's (``ratio_vs_equal``, ``ratio_min_vs_equal``), ``peak_memory_mb`` (that route alone: the
CUDA allocator's peak, or on CPU the peak RSS of a fresh process running ``MEMORY_STEPS`` of its
steps, as ``bench.peak_memory_bytes``), and ``update_rel_diff_vs_ours``:
``||u - u_ours|| / ||u_ours||`` for the parameter update ``u`` of one step from the same initial
weights (SGD, learning rate 1, so ``u`` is minus the gradient written; the same torch seed
before each step, so PCGrad's random task orders agree): near 0 shows that the route times the
same computation as ours. A TorchJD or T-pass route that raises a ``RuntimeError`` (e.g. an
operation without a vmap batching rule on some device) is left out, its row holding the error.

TorchJD counterparts (``COUNTERPARTS``): mgda -> ``MGDA()`` (its Frank-Wolfe solver and
defaults, epsilon 1e-3 and 100 iterations; ours solves the QP exactly, so the updates agree to
about the solver's tolerance), upgrad -> ``UPGrad(projector=QuadprogProjector(norm_eps,
reg_eps))``, pcgrad -> ``PCGrad()``, imtl_g -> ``IMTLG()``, cagrad -> ``CAGrad(c, norm_eps)``
(TorchJD does not divide by ``1 + c^2``: the updates differ by that factor), aligned_mtl ->
``AlignedMTL(scale_mode=...)``, nash_mtl -> ``NashMTL(T, max_norm, update_weights_every=1,
optim_niter=20)`` (the authors' defaults; not Gramian-based: no optimize_gramian or autogram
route). Hyperparameters without a counterpart (e.g. ``mgda:normalization=l2``) are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import methods
from deepchest.metrics import masked_task_losses
from deepchest.models import MultiTaskNet
from harness import bench
from harness.bench_spec import BASELINE, BenchError, BenchSettings, MethodSpec
from harness.trainloop import build_optimizer, resolve_amp, seed_everything

DEFAULT_METHODS = ("mgda", "upgrad", "pcgrad")
# steps of a route alone for its peak memory: the first allocates the optimizer's state, the
# second runs with it (bench uses 3; each step of a TorchJD route costs seconds on a small CPU)
MEMORY_STEPS = 2
INSTALL_HINT = (
    "--compare torchjd needs torchjd 0.18, a test-only dependency: pip install -e '.[dev]'"
)

#: route kind -> label in the table and the JSON (short: the table fits 80 columns)
ROUTES: dict[str, str] = {
    "equal": "equal",
    "ours": "ours (TrainStep)",
    "autojac": "torchjd autojac",
    "autojac_gramian": "torchjd autojac+gram",
    "autogram": "torchjd autogram",
    "naive": "T retained passes",
}
LEGEND = (
    "torchjd autojac: mtl_backward + jac_to_grad; +gram: optimize_gramian_computation=True; "
    "autogram: Engine(trunk, batch_dim=None), then losses.backward(weights)"
)


@dataclass(frozen=True)
class Counterpart:
    """A method's TorchJD 0.18 aggregator: ``build(hp, num_tasks)``; ``keys``: our
    hyperparameters accepted (mapped, or solver details of ours only); ``gramian``: a
    Gramian-weighted aggregator (the optimize_gramian and autogram routes apply)."""

    aggregator: str
    build: Callable[[Any, int], Any]
    keys: tuple[str, ...] = ()
    gramian: bool = True
    refuse: Callable[[Any], str | None] = lambda hp: None


def _mgda(hp, num_tasks):
    from torchjd.aggregation import MGDA

    return MGDA()  # TorchJD's Frank-Wolfe with its defaults: none of our solver settings map


def _upgrad(hp, num_tasks):
    from torchjd._linalg import QuadprogProjector
    from torchjd.aggregation import UPGrad

    return UPGrad(projector=QuadprogProjector(norm_eps=hp.norm_eps, reg_eps=hp.reg_eps))


def _pcgrad(hp, num_tasks):
    from torchjd.aggregation import PCGrad

    return PCGrad()


def _imtl_g(hp, num_tasks):
    from torchjd.aggregation import IMTLG

    return IMTLG()


def _cagrad(hp, num_tasks):
    from torchjd.aggregation import CAGrad

    return CAGrad(c=hp.c, norm_eps=hp.norm_eps)


def _aligned_mtl(hp, num_tasks):
    from torchjd.aggregation import AlignedMTL

    return AlignedMTL(scale_mode=hp.scale_mode)


def _nash_mtl(hp, num_tasks):
    from torchjd.aggregation import NashMTL

    return NashMTL(n_tasks=num_tasks, max_norm=hp.max_norm, update_weights_every=1, optim_niter=20)


COUNTERPARTS: dict[str, Counterpart] = {
    "mgda": Counterpart(
        "MGDA",
        _mgda,
        ("normalization", "reg_eps", "max_iters"),
        refuse=lambda hp: "normalization" if hp.normalization != "none" else None,
    ),
    "upgrad": Counterpart("UPGrad", _upgrad, ("norm_eps", "reg_eps", "max_iters")),
    "pcgrad": Counterpart("PCGrad", _pcgrad),
    "imtl_g": Counterpart("IMTLG", _imtl_g),
    "cagrad": Counterpart("CAGrad", _cagrad, ("c", "norm_eps", "rescale", "reg_eps")),
    "aligned_mtl": Counterpart(
        "AlignedMTL",
        _aligned_mtl,
        ("scale_mode", "rank_rtol"),
        refuse=lambda hp: "rank_rtol" if hp.rank_rtol != 0 else None,
    ),
    "nash_mtl": Counterpart(
        "NashMTL", _nash_mtl, ("max_norm", "reg_eps", "max_iters"), gramian=False
    ),
}


@dataclass(frozen=True)
class Route:
    kind: str  # a key of ROUTES
    spec: MethodSpec

    @property
    def label(self) -> str:
        return ROUTES[self.kind]


def check_torchjd() -> str:
    """TorchJD's version; a one-line ``BenchError`` saying how to install it when missing."""
    try:
        import torchjd
        from torchjd.autogram import Engine  # noqa: F401
        from torchjd.autojac import jac_to_grad, mtl_backward  # noqa: F401
    except ImportError:
        raise BenchError(INSTALL_HINT) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchjd")
    except PackageNotFoundError:  # imported from a source tree
        return str(getattr(torchjd, "__version__", "unknown"))


def parse_compare_methods(items: list[str] | None, num_tasks: int) -> list[MethodSpec]:
    """``--methods`` for ``--compare torchjd`` (default ``DEFAULT_METHODS``; ``equal`` is the
    baseline anyway): gradient methods at the shared parameters with a TorchJD counterpart."""
    chunks = items if items else list(DEFAULT_METHODS)
    texts = [part for chunk in chunks for part in chunk.replace(",", " ").split()]
    specs = []
    for text in texts:
        spec = MethodSpec.parse(text, num_tasks)
        if spec.text == BASELINE:
            continue
        counterpart = COUNTERPARTS.get(spec.name)
        if counterpart is None:
            raise BenchError(
                f"--compare torchjd: {spec.text!r} has no TorchJD 0.18 aggregator to compare "
                f"with; supported: {', '.join(COUNTERPARTS)}"
            )
        method = methods.create(spec.name, num_tasks=num_tasks, **spec.params)
        if method.level != "parameters":
            raise BenchError(
                f"--compare torchjd: {spec.text!r} works at the {method.level} level; the "
                "comparison is at the shared parameters"
            )
        bad = [k for k in spec.params if k not in (*counterpart.keys, "level")]
        bad += [k] if (k := counterpart.refuse(method.hp)) and k not in bad else []
        if bad:
            raise BenchError(
                f"--compare torchjd: {spec.text!r}: {', '.join(bad)} has no counterpart in "
                f"TorchJD's {counterpart.aggregator}"
            )
        if spec.text in {s.text for s in specs}:
            raise BenchError(f"--methods lists {spec.text} more than once")
        specs.append(spec)
    if not specs:
        raise BenchError("--compare torchjd: give at least one gradient method in --methods")
    return specs


def routes_for(specs: list[MethodSpec], num_tasks: int) -> list[Route]:
    routes = [Route("equal", MethodSpec.parse(BASELINE, num_tasks))]
    for spec in specs:
        kinds = ["ours", "autojac", "autojac_gramian", "autogram", "naive"]
        if not COUNTERPARTS[spec.name].gramian:
            kinds = ["ours", "autojac", "naive"]
        routes += [Route(kind, spec) for kind in kinds]
    return routes


# ---- the steps --------------------------------------------------------------------------------


def _network(settings: BenchSettings, device: torch.device) -> MultiTaskNet:
    """The network of ``bench.build_step``: the same seed, hence the same initial weights."""
    seed_everything(settings.seed)
    net = MultiTaskNet(settings.backbone, settings.tasks).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    net.train()
    return net


def _optimizer(settings: BenchSettings, params, lr: float | None):
    """``bench.build_step``'s optimizer; ``lr`` given: plain SGD at that rate (the update check)."""
    if lr is not None:
        return torch.optim.SGD(params, lr=lr)
    train = {"optimizer": settings.optimizer, "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
    return build_optimizer(train, params)


class TorchStep:
    """One training step of a non-``TrainStep`` route (``autojac``, ``autojac_gramian``,
    ``autogram``, ``naive``) on its own network; ``__call__(x, y, m)`` as ``TrainStep``'s."""

    def __init__(
        self, route: Route, settings: BenchSettings, device: torch.device, lr: float | None
    ):
        self.kind = route.kind
        self.net = _network(settings, device)
        self.num_tasks = settings.tasks
        self.shared = [p for p in self.net.shared_parameters() if p.requires_grad]
        self.heads = [list(self.net.task_parameters(t)) for t in range(self.num_tasks)]
        self.optimizer = _optimizer(settings, list(self.net.parameters()), lr)
        self.amp_dtype = resolve_amp(settings.amp, device)
        spec = route.spec
        self.method = methods.create(spec.name, num_tasks=self.num_tasks, **spec.params)
        self.method = self.method.to(device)
        # what TrainStep (heads=None) gives the heads: their own loss's gradient ("own") or
        # w_t times it ("weighted")
        self.head_mode = getattr(self.method, "default_heads", "weighted")
        self.head_params = [p for params in self.heads for p in params]
        if self.kind != "naive":
            self.aggregator = COUNTERPARTS[spec.name].build(self.method.hp, self.num_tasks)
        if self.kind == "autogram":
            from torchjd.autogram import Engine

            # the Gramian at the trunk only (the shared parameters); BatchNorm mixes the
            # samples, so no batch dimension
            self.engine = Engine(self.net.trunk, batch_dim=None)

    def _forward(self, x: Tensor, y: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        autocast = (
            torch.autocast(x.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with autocast:
            representation, logits = self.net(x)
        return representation, masked_task_losses(logits, y, m)

    def __call__(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        representation, losses = self._forward(x, y, m)
        if self.kind in ("autojac", "autojac_gramian"):
            weights = self._autojac(representation, losses)
        elif self.kind == "autogram":
            weights = self.aggregator.gramian_weighting(self.engine.compute_gramian(losses))
            if self.head_mode == "weighted":
                losses.backward(weights.to(losses.dtype))
            else:
                torch.autograd.backward(losses.sum(), inputs=self.head_params, retain_graph=True)
                torch.autograd.backward(losses, weights.to(losses.dtype), inputs=self.shared)
        else:
            weights = self._naive(losses)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return weights

    def _autojac(self, representation: Tensor, losses: Tensor) -> Tensor | None:
        from torchjd.autojac import jac_to_grad, mtl_backward

        mtl_backward(
            list(losses.unbind()),
            features=representation,
            tasks_params=self.heads,
            shared_params=self.shared,
            # the T heads are one fused matrix product (MultiTaskNet.forward): each task's
            # backward goes through that one node, so it must outlive the first task's
            retain_graph=True,
        )
        weights = jac_to_grad(
            self.shared,
            self.aggregator,
            optimize_gramian_computation=self.kind == "autojac_gramian",
        )
        if weights is not None and self.head_mode == "weighted":  # head t got grad L_t
            with torch.no_grad():
                for t, params in enumerate(self.heads):
                    for p in params:
                        p.grad.mul_(weights[t].to(p.grad.dtype))
        return weights

    def _naive(self, losses: Tensor) -> Tensor:
        rows = []
        for t in range(self.num_tasks):
            grads = torch.autograd.grad(losses[t], self.shared, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        direction, weights = self.method.aggregate(torch.stack(rows), losses.detach())
        offset = 0
        for p in self.shared:
            p.grad = direction[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        coefficients = (
            weights.detach() if self.head_mode == "weighted" else torch.ones_like(weights)
        )
        objective = (coefficients.to(losses.dtype) * losses).sum()
        torch.autograd.backward(objective, inputs=self.head_params)
        return weights


class TrainStepRoute:
    """``equal`` and ``ours``: ``bench.build_step``'s ``TrainStep``, the step a trial runs."""

    def __init__(
        self, route: Route, settings: BenchSettings, device: torch.device, lr: float | None
    ):
        self.step = bench.build_step(route.spec, settings, device)
        self.net = self.step.net
        if lr is not None:
            self.step.optimizer = _optimizer(settings, list(self.net.parameters()), lr)
        self.batch_size = settings.batch_size

    def __call__(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        weights = self.step(x, y, m)[1]
        self.step.timer.end_step(self.batch_size)  # also clears a CUDA timer's events
        return weights


def build_route(
    route: Route, settings: BenchSettings, device: torch.device, *, lr: float | None = None
):
    """A fresh network and optimizer (the same initial weights for every route) and the step:
    ``step(x, y, m)`` trains one batch; ``step.net`` is the network."""
    if route.kind in ("equal", "ours"):
        return TrainStepRoute(route, settings, device, lr)
    return TorchStep(route, settings, device, lr)


# ---- measurements -----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def update_differences(
    routes: list[Route], settings: BenchSettings, device: torch.device
) -> tuple[list[float], dict[int, str]]:
    """Per route, ``||u - u_ours|| / ||u_ours||`` for the parameter update ``u`` of one SGD step
    (learning rate 1) from the same initial weights, with the torch seed reset before each
    step; NaN for equal (another method). Each route is built, stepped and dropped in turn.

    Also returns ``{route index: error}`` for the TorchJD and T-pass routes that raised a
    ``RuntimeError`` (e.g. an operation without a vmap batching rule on some device; out of
    memory): their difference is NaN and the caller leaves them out. Ours raising is a bug."""
    batch = bench.synthetic_batch(settings, device)
    updates: dict[tuple[str, str], Tensor] = {}
    errors: dict[int, str] = {}
    for i, route in enumerate(routes):
        if route.kind == "equal":
            continue
        try:
            step = build_route(route, settings, device, lr=1.0)
            before = _flat_parameters(step.net)
            torch.manual_seed(settings.seed + 1)
            step(*batch)
            updates[route.kind, route.spec.text] = _flat_parameters(step.net) - before
        except RuntimeError as exc:
            if route.kind == "ours":
                raise
            errors[i] = f"{type(exc).__name__}: {_first_line(exc)}"
        step = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = []
    for i, route in enumerate(routes):
        if route.kind == "equal" or i in errors:
            out.append(math.nan)
            continue
        ours = updates["ours", route.spec.text]
        change = updates[route.kind, route.spec.text] - ours
        out.append(float(change.norm() / ours.norm().clamp(min=1e-300)))
    return out, errors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _flat_parameters(net: torch.nn.Module) -> Tensor:
    return torch.cat([p.detach().double().reshape(-1).cpu() for p in net.parameters()])


def peak_memory_bytes(route: Route, settings: BenchSettings, device: torch.device) -> int:
    """A few steps of this route alone (``bench.measure_peak_memory``)."""
    build = functools.partial(_route_step, route, settings)
    label = f"{route.label} / {route.spec.text}"
    return bench.measure_peak_memory(build, device, label, steps=MEMORY_STEPS)


def _route_step(route: Route, settings: BenchSettings, device: torch.device):
    return build_route(route, settings, device), bench.synthetic_batch(settings, device)


def run_compare(
    specs: list[MethodSpec],
    settings: BenchSettings,
    progress=None,
    *,
    memory: bool = True,
) -> list[dict]:
    """Time every route (round-robin; ``settings.warmup`` untimed rounds, then
    ``settings.steps`` timed ones), check its update against ours and measure its peak memory
    (``memory=False``: skipped, NaN). Returns one dict per route: equal first, then per method
    ours and the other routes."""
    check_torchjd()
    if settings.amp != "off" and resolve_amp(settings.amp, torch.device(settings.device)) not in (
        None,
        torch.bfloat16,
    ):
        raise BenchError("--compare torchjd supports --amp off or bf16 (no loss scaling)")
    device = bench.bench_device(settings)
    say = progress or (lambda text: None)
    routes = routes_for(specs, settings.tasks)
    say("checking every route's update against ours")
    differences, errors = update_differences(routes, settings, device)
    batch = bench.synthetic_batch(settings, device)
    steps = [
        None if i in errors else build_route(r, settings, device) for i, r in enumerate(routes)
    ]
    times: list[list[float]] = [[] for _ in routes]
    rounds = settings.warmup + settings.steps
    for i in range(rounds):
        say(f"round {i + 1}/{rounds} (warm-up {settings.warmup}) of {len(routes)} routes")
        for j, step in enumerate(steps):
            if step is None:
                continue
            _sync(device)
            start = time.perf_counter()
            step(*batch)
            _sync(device)
            if i >= settings.warmup:
                times[j].append(time.perf_counter() - start)
    del steps, step  # the last loop variable would keep a network on the device
    peaks = []
    for i, route in enumerate(routes):
        if memory and i not in errors:
            say(f"measuring the peak memory of {route.label} / {route.spec.text}")
            peaks.append(peak_memory_bytes(route, settings, device))
        else:
            peaks.append(math.nan)
    median = [statistics.median(t) * 1000 if t else math.nan for t in times]
    low = [min(t) * 1000 if t else math.nan for t in times]
    rows = []
    for i, route in enumerate(routes):
        counterpart = COUNTERPARTS.get(route.spec.name)
        if route.kind.startswith("autojac") or route.kind == "autogram":
            aggregator = f"torchjd.aggregation.{counterpart.aggregator}"
        else:
            aggregator = f"methods.{route.spec.text}"
        rows.append(
            {
                "route": route.kind,
                "label": route.label,
                "method": route.spec.text,
                "aggregator": aggregator,
                "step_time_ms": median[i],
                "step_time_min_ms": low[i],
                "ratio_vs_equal": median[i] / median[0],
                "ratio_min_vs_equal": low[i] / low[0],
                "peak_memory_mb": peaks[i] / 2**20,
                "extra_memory_mb_vs_equal": (peaks[i] - peaks[0]) / 2**20,
                "update_rel_diff_vs_ours": differences[i],
                "images_per_second": settings.batch_size / (median[i] / 1000),
                "error": errors.get(i),
            }
        )
    return rows


# ---- the command ------------------------------------------------------------------------------


def command(args, settings: BenchSettings, console) -> int:
    """``harness bench --compare torchjd``: run, write ``--output``, print the table on
    ``console`` (a wide one, as ``harness bench``'s)."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from reports.format import plural

    version = check_torchjd()
    specs = parse_compare_methods(args.methods, settings.tasks)
    output = Path(args.output) if args.output else None  # cmd_bench refused a folder
    status_console = Console(stderr=True)
    start = time.perf_counter()
    with status_console.status("starting") as status:
        rows = run_compare(
            specs,
            settings,
            progress=lambda text: status.update(f"{text} ({bench.elapsed(start)})"),
        )
    machine = bench.machine_description(settings.device)
    if output is not None:
        bench.write_json(output, report(rows, settings, machine, version))
    where = machine.get("gpu") or f"{machine['cpu']}, {plural(machine['threads'], 'thread')}"
    title = (
        f"{settings.backbone}, {plural(settings.tasks, 'task')}, {settings.image_size} px, "
        f"batch {settings.batch_size}, {plural(settings.steps, 'round')}, {where}, "
        f"amp {settings.amp}, torchjd {version}; each step includes the optimizer step"
    )
    columns = (  # header, its two-line form for a narrow screen, key, format
        ("median ms", "median\nms", "step_time_ms", "{:.1f}"),
        ("min ms", "min\nms", "step_time_min_ms", "{:.1f}"),
        ("x equal", "x\nequal", "ratio_vs_equal", "{:.2f}"),
        ("x equal (min)", "x equal\n(min)", "ratio_min_vs_equal", "{:.2f}"),
        ("peak MB", "peak\nMB", "peak_memory_mb", "{:.0f}"),
        ("+MB vs equal", "+MB vs\nequal", "extra_memory_mb_vs_equal", "{:+.0f}"),
        ("update vs ours", "update\nvs ours", "update_rel_diff_vs_ours", "{:.1e}"),
    )

    def table(compact: bool) -> Table:
        out = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
            show_edge=not compact,
            padding=(0, 0) if compact else (0, 1),
        )
        names = ("method\nroute",) if compact else ("method", "route")
        for name in names:
            out.add_column(name, no_wrap=True)
        for header, short, _, _ in columns:
            out.add_column(short if compact else header, justify="right", no_wrap=True)
        for row in rows:
            name = (
                (f"{row['method']}\n{row['label']}",) if compact else (row["method"], row["label"])
            )
            values = (
                "-"
                if isinstance(row[key], float) and math.isnan(row[key])
                else fmt.format(row[key])
                for _, _, key, fmt in columns
            )
            out.add_row(*map(Text, (*name, *values)))
        return out

    full = table(compact=False)
    natural = Measurement.get(console, console.options.update_width(10_000), full).maximum
    console.print(full if natural <= console.width else table(compact=True))
    console.print(LEGEND)
    note = (
        "update vs ours: ||u - u_ours|| / ||u_ours|| of one SGD step (lr 1) from the same "
        "initial weights"
    )
    if any(s.name == "mgda" for s in specs):
        note += "; TorchJD's MGDA stops its Frank-Wolfe solver at epsilon 1e-3, ours is exact"
    if any(s.name == "cagrad" for s in specs):
        note += "; TorchJD's CAGrad does not divide by 1 + c^2"
    console.print(note)
    for row in rows:
        if row["error"]:
            console.print(f"{row['method']} / {row['label']} failed: {row['error']}")
    if output is not None:
        print(f"wrote {output}")
    return 0


def report(rows: list[dict], settings: BenchSettings, machine: dict, version: str) -> dict:
    """The ``--output`` JSON: the settings, the machine and one row per route."""
    return {
        "settings": dataclasses.asdict(settings),
        "machine": machine,
        "torchjd": version,
        "optimizer_step_included": True,
        "timing": "round-robin; step_time_ms median, step_time_min_ms minimum over the rounds",
        "rows": rows,
    }
