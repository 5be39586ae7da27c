"""The one training loop, for every method, backbone and data set.

It knows nothing of Ray: the launcher hands it a ``Reporter`` (Tune, Train, or the plain
``MemoryReporter`` of tests) and a ``Collective`` (single process, or torch.distributed under
Ray Train's ``TorchTrainer``). Per step (``TrainStep``): forward, per-task losses ``[T]``,
``engine.backward`` (the method turns T losses into one update), optimizer step. Per epoch:
evaluate train and val without augmentation, ``method.on_epoch_end``, save the epoch's state
to the run's ``CheckpointStore`` (rank 0 only; see ``harness.checkpoints``), report metrics.
At the end: evaluate test with the weights of the best epoch by mean val AUROC.

A trial whose store holds an epoch state (a Tune retry, ``--resume``, any worker of a
multi-worker trial) continues from it: model, optimizer, scaler, method state, rows, best
epoch, timers and the Python, NumPy and torch (CPU and CUDA) RNG states, so that on CPU the
continued trial is bit-identical to one that was never interrupted.

A trial is described by a plain dict (see ``launch.trial_spec``) so that it crosses process
boundaries unchanged:
``{trial_id, method, backbone, seed, data: {...}, train: {...}, weighting_method,
method_params: {...}, device: "cpu" | "cuda", threads: int, checkpoints: URI | None}``, where
``method`` is the name in the grid and ``weighting_method`` the registered method it runs (they
differ for a variant), and ``checkpoints`` the run's checkpoint root (``checkpoints.store_uri``;
None: nothing is saved or restored).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

import methods
from deepchest.data import LabeledImages, load_splits
from deepchest.data.augment import AugmentSettings, augment_batch, eval_batch
from deepchest.metrics import TaskMetrics, masked_task_losses, task_metrics
from deepchest.models import MultiTaskNet
from harness.checkpoints import CheckpointStore
from harness.measure import StepTimer
from harness.nodes import this_node, trial_placement
from harness.storage import is_remote, stage_prepared
from methods import engine
from reports.format import plural


class Reporter(Protocol):
    """Where the loop's metrics go (Tune, Train, a list). Checkpoints do not pass through it:
    the loop saves them to the run's ``CheckpointStore`` itself."""

    def report(self, metrics: dict[str, Any]) -> None: ...


class MemoryReporter:
    """Keeps reports in a list: for tests and for running the loop in one process without
    Ray."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(metrics)


class Collective:
    """Collectives of a single process: each is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_gather_cat(self, tensor: Tensor) -> Tensor:
        return tensor

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Make every rank's buffers (BatchNorm statistics) rank 0's."""


class TorchCollective(Collective):
    """Collectives over an initialised ``torch.distributed`` process group (gloo or NCCL)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        self._dist.all_reduce(out)
        return out / self.world_size

    def all_gather_cat(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        for buffer in model.buffers():
            self._dist.broadcast(buffer, 0)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch; called at every trial start since worker processes are reused."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states that training draws from, as plain objects and tensors (what
    ``torch.load(weights_only=True)`` reads back): Python's ``random``, NumPy's legacy global
    generator (its MT19937 key as an int64 tensor ``[624]``), torch's CPU generator and, on a
    CUDA device, that device's generator."""
    numpy = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (a CUDA state only on a CUDA device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].cpu().numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a CUDA device that supports it, fp16 (with loss scaling) on an older
    one. Mixed precision is a GPU feature here: on CPU it is always off."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def build_optimizer(train: dict[str, Any], params) -> torch.optim.Optimizer:
    """``params``: parameters or param groups; ``train``'s lr and weight decay are the defaults
    that a group (e.g. a method's own, such as uncertainty weighting's ``s``) may override."""
    name, lr, wd = train["optimizer"], train["lr"], train["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=train["momentum"])


class Diverged(Exception):
    pass


class NonFiniteLoss(Exception):
    """A step's (all-reduced) loss is not finite; ``tasks`` are the indices of the bad tasks."""

    def __init__(self, tasks: list[int]):
        super().__init__(f"non-finite loss for tasks {tasks}")
        self.tasks = tasks


@contextmanager
def batchnorm_statistics_frozen(module: torch.nn.Module):
    """Run a block in which BatchNorm layers normalise with the batch's statistics (as in train
    mode) but update neither their running statistics nor their batch counter: for an extra
    forward pass that must not count as a second batch (FAMO's). The buffers are set aside for
    the block, which costs no device work (copying them back would be ~100 small kernels)."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, [getattr(m, n) for n in names]))
            for n in names:
                setattr(m, n, None)
    try:
        yield
    finally:
        for m, values in saved:
            for n, value in zip(names, values, strict=True):
                setattr(m, n, value)


class TrainStep:
    """One optimisation step on one batch: forward, per-task losses, ``engine.backward``,
    optimizer step and the method's ``on_step_end``. The training loop and ``harness bench``
    both run steps through this class, so a benchmark times exactly what training does.

    ``net`` is the bare ``MultiTaskNet``; ``model`` the same network as the collective wrapped it
    (DDP under several workers). Loss-level methods rely on the wrapper's gradient all-reduce;
    the gradient levels switch it off (``no_sync``) and let the engine all-reduce ``J``
    instead, so that every worker aggregates the same union Jacobian. A method that needs the
    losses after the step (FAMO) gets them from a second forward pass on the same batch, without
    grad and with the BatchNorm statistics frozen. The method is told which tasks have labels in
    the step (``present``: at least one labelled example on any worker, from the mask ``m``,
    all-reduced with the losses); ``self.present`` holds the last step's.
    """

    def __init__(
        self,
        net: MultiTaskNet,
        model: torch.nn.Module,
        method: methods.Method,
        optimizer: torch.optim.Optimizer,
        *,
        collective: Collective,
        timer: StepTimer,
        amp_dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        heads: str | None = None,
        validation_batch: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None,
    ):
        self.net, self.model, self.method, self.optimizer = net, model, method, optimizer
        #: one validation batch ``(x, y, m)`` per call, for a look-ahead method (Auto-Lambda)
        self.validation_batch = validation_batch
        if getattr(method, "needs_validation_batch", False) and validation_batch is None:
            raise ValueError(f"method {method.name!r} needs validation batches (none given)")
        self.coll, self.timer, self.scaler, self.heads = collective, timer, scaler, heads
        self.amp_dtype = amp_dtype
        self.device = next(net.parameters()).device
        self.local_gradients = method.level != "loss" and collective.world_size > 1
        #: the tasks with labels in the last step (Tensor[T] of bool, the same on every worker)
        self.present: Tensor | None = None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _grad_sync_off(self):
        return self.model.no_sync() if self.local_gradients else nullcontext()

    def _losses(self, module: torch.nn.Module, x: Tensor, y: Tensor, m: Tensor):
        with self.autocast():
            representation, logits = module(x)
        return representation, logits, masked_task_losses(logits, y, m)

    def _lookahead(
        self, x: Tensor, y: Tensor, m: Tensor, losses: Tensor, shared: Tensor, present: Tensor
    ) -> None:
        """Auto-Lambda's meta step before the training step: the hypergradient of one
        validation batch's loss after a look-ahead step, then ``method.meta_step``."""
        xv, yv, mv = self.validation_batch()

        def at(params: dict[str, Tensor], xb: Tensor, yb: Tensor, mb: Tensor) -> Tensor:
            # the batch's own BatchNorm statistics, running ones untouched: these forwards are
            # not training batches
            with self.autocast(), batchnorm_statistics_frozen(self.net):
                _, logits = torch.func.functional_call(self.net, params, (xb,))
            return masked_task_losses(logits, yb, mb)

        group = self.optimizer.param_groups[0]
        hyper = engine.lookahead_hypergradient(
            self.net,
            losses,
            self.method.weights(shared, present=present),
            train_losses=lambda params: at(params, x, y, m),
            val_losses=lambda params: at(params, xv, yv, mv),
            lr=float(group["lr"]),
            weight_decay=float(group.get("weight_decay", 0.0)),
            momentum=_momentum_terms(self.optimizer, self.net),
            sync=self.coll if self.coll.world_size > 1 else None,
        )
        self.method.meta_step(hyper, present)

    def __call__(self, x: Tensor, y: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Train on one batch. Returns ``(losses, weights, logits)``, detached: the per-task
        losses averaged over the workers, the task weights used, and this worker's logits.
        Raises ``NonFiniteLoss`` before any update when a loss is not finite.

        A two-batch method (``method.batches_per_step == 2``: SDMGrad, MoDo) gets the batch as
        two halves, each its own forward pass (two independent mini-batches: the caller draws
        twice the batch size); the losses returned are the mean of the halves'."""
        timer = self.timer
        second = None
        with self._grad_sync_off():
            with timer.phase("forward"):
                if getattr(self.method, "batches_per_step", 1) == 2:
                    half = x.shape[0] // 2
                    representation, first_logits, losses = self._losses(
                        self.model, x[:half], y[:half], m[:half]
                    )
                    _, second_logits, second = self._losses(
                        self.model, x[half:], y[half:], m[half:]
                    )
                    logits = torch.cat([first_logits, second_logits])
                    mean = (losses + second) / 2
                else:
                    representation, logits, losses = self._losses(self.model, x, y, m)
                    mean = losses
                # one collective: the losses' mean and, > 0, the OR of the workers' presence
                local = torch.cat([mean.detach(), m.any(0).to(losses.dtype)])
                shared, present = self.coll.all_reduce_mean(local).split(len(losses))
                present = present > 0
                self.present = present
            if not bool(torch.isfinite(shared).all()):
                raise NonFiniteLoss(torch.nonzero(~torch.isfinite(shared)).flatten().tolist())
            with timer.phase("backward"):
                if getattr(self.method, "needs_validation_batch", False):
                    self._lookahead(x, y, m, losses, shared, present)
                weights = engine.backward(
                    self.method,
                    losses,
                    # already all-reduced above (the divergence check needs it): reuse it
                    # rather than run the collective twice
                    reduce=lambda _losses, shared=shared: shared,
                    scale=self.scaler.scale if self.scaler else None,
                    model=self.net,
                    heads=self.heads,
                    representation=representation,
                    sync=self.coll if self.local_gradients else None,
                    present=present,
                    second=second,
                )
        with timer.phase("optimizer"):
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.method.needs_losses_after:
            with (
                timer.phase("backward"),
                torch.no_grad(),
                batchnorm_statistics_frozen(self.net),
            ):
                after = self.coll.all_reduce_mean(self._losses(self.net, x, y, m)[2])
            self.method.on_step_end(after)
        else:
            self.method.on_step_end()
        return shared, weights.detach(), logits.detach()


def _momentum_terms(optimizer: torch.optim.Optimizer, net: torch.nn.Module) -> dict[str, Tensor]:
    """SGD's momentum term ``momentum * buffer`` per parameter name (empty for Adam, whose
    look-ahead the reference code takes as a plain gradient step)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return {}
    terms = {}
    for group in optimizer.param_groups:
        factor = group.get("momentum", 0.0)
        for p in group["params"]:
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if factor and buffer is not None:
                terms[id(p)] = factor * buffer
    return {n: terms[id(p)] for n, p in net.named_parameters() if id(p) in terms}


class _Trial:
    """State of one running trial; ``run`` is the loop."""

    def __init__(self, spec: dict[str, Any], reporter: Reporter, collective: Collective):
        self.spec, self.reporter, self.coll = spec, reporter, collective
        self.started = time.perf_counter()
        self.device = torch.device(spec.get("device", "cpu"))
        if self.device.type == "cuda":
            if self.device.index is None:  # "cuda": Ray has narrowed CUDA_VISIBLE_DEVICES
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
            # cuDNN picks the fastest kernels for the fixed batch shape (GPU runs are not
            # bit-reproducible anyway); channels-last lets convolutions use tensor cores
            torch.backends.cudnn.benchmark = True
        self.memory_format = (
            torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        )
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(spec.get("threads", 1))))
        seed_everything(spec["seed"])

        data = spec["data"]
        if data.get("prepared") and is_remote(data["prepared"]):  # memory-mapping needs a file
            local = stage_prepared(data["prepared"], data.get("cache_dir"))
            data = dict(data, prepared=str(local))
        self.splits = load_splits(data)
        self.image_size = int(spec["data"]["image_size"])
        augment = spec["data"].get("augment", False)
        self.augment = AugmentSettings(hflip=bool(spec["data"].get("hflip", False)))
        if augment is not True:  # "auto" is resolved by the launcher; tests may pass bools
            self.augment = AugmentSettings.none()
        self.train_set = self.splits["train"]
        self.tasks = list(self.train_set.task_names)
        train = spec["train"]
        self.batch_size = train["batch_size"]
        pretrained = train.get("pretrained") or None
        if pretrained:  # pre-flight's one line, also for a path only this node could check
            from harness.preflight import pretrained_problems

            if problems := pretrained_problems(pretrained, [spec["backbone"]]):
                raise ValueError(problems[0])
        self.net = MultiTaskNet(
            spec["backbone"],
            len(self.tasks),
            in_channels=self.train_set.images.shape[1],
            pretrained=pretrained,
        ).to(self.device, memory_format=self.memory_format)
        self.model = collective.wrap(self.net, self.device)
        self.method = methods.create(
            spec.get("weighting_method", spec["method"]),  # a variant runs its base method
            num_tasks=len(self.tasks),
            task_names=self.tasks,
            **spec.get("method_params", {}),
        ).to(self.device)
        if getattr(self.method, "needs_validation_batch", False):
            size = len(self.splits["val"])
            if size < self.batch_size * collective.world_size:
                raise ValueError(
                    f"method {self.method.name!r} draws validation batches, but the validation "
                    f"split has {size} images, fewer than one batch (train.batch_size "
                    f"{self.batch_size} x {plural(collective.world_size, 'worker')})"
                )
        batches = getattr(self.method, "batches_per_step", 1)
        if len(self.train_set) < self.batch_size * collective.world_size * batches:
            per_step = f" x {batches} batches per step ({self.method.name})" if batches > 1 else ""
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one step "
                f"(train.batch_size {self.batch_size} x "
                f"{plural(collective.world_size, 'worker')}{per_step})"
            )
        groups = [{"params": list(self.net.parameters())}]
        if (method_group := self.method.optimizer_group()) is not None:
            groups.append(method_group)
        self.optimizer = build_optimizer(train, groups)
        self.amp_dtype = resolve_amp(train.get("amp", "auto"), self.device)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        self.epoch = 0
        self.rows: list[dict[str, Any]] = []
        # rows restored from a checkpoint, sent again with the next epoch's report: the driver
        # may have reset its record (--resume) and must hold them even if this attempt fails
        self.unreported: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": None, "val_mean_auroc": -math.inf, "model": None}
        self.train_time_s = 0.0
        self.prior_wall_s = 0.0
        self.timer = StepTimer(self.device)
        self.store = CheckpointStore(spec["checkpoints"]) if spec.get("checkpoints") else None
        self._restore()
        self.train_step = TrainStep(
            self.net,
            self.model,
            self.method,
            self.optimizer,
            collective=self.coll,
            timer=self.timer,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            heads=None if train.get("heads", "method") == "method" else train["heads"],
            validation_batch=(
                (lambda: next(self._val_batches))
                if getattr(self.method, "needs_validation_batch", False)
                else None
            ),
        )
        self._val_batches: Iterator[tuple[Tensor, Tensor, Tensor]] | None = None

    # ---- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """The epoch's full state; the best epoch's weights go to their own file."""
        return {
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "method": self.method.state_dict(),
            "rows": self.rows,
            "best": {k: v for k, v in self.best.items() if k != "model"},
            "timer": self.timer.state(),
            "train_time_s": self.train_time_s,
            "wall_time_s": self.prior_wall_s + time.perf_counter() - self.started,
            "rng": rng_state(self.device),
        }

    def _restore(self) -> None:
        """Continue from the newest epoch state in the store, if any. Every rank reads it
        into its own memory (rank 0's RNG state: the ranks draw alike from the same seed)."""
        if self.store is None:
            return
        state = self.store.load_latest(self.spec["trial_id"], map_location=self.device)
        self._check_same_epoch(state["epoch"] if state else 0)
        if state is None:
            return
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.epoch, self.rows = state["epoch"], state["rows"]
        self.unreported = list(self.rows)
        self.best = {**state["best"], "model": state["best_model"]}
        self.timer = StepTimer(self.device, history=state["timer"])
        self.train_time_s, self.prior_wall_s = state["train_time_s"], state["wall_time_s"]
        set_rng_state(state["rng"], self.device)

    def _check_same_epoch(self, epoch: int) -> None:
        """Every worker must continue from the same epoch, or their collectives pair up wrong
        (a hang, or sums of different steps): refuse when their stores disagree."""
        if self.coll.world_size == 1:
            return
        mine = torch.tensor([float(epoch)], device=self.device)
        epochs = self.coll.all_gather_cat(mine).cpu().tolist()
        if len(set(epochs)) > 1:
            raise RuntimeError(
                f"the workers found different checkpoints (epochs {sorted(set(epochs))}): "
                "every node must reach the same store (set output.storage to a shared path "
                "or a storage URI on a cluster whose nodes share no file system)"
            )

    def _save(self) -> None:
        """Rank 0 writes the epoch's state (the other ranks hold the same)."""
        if self.store is None or self.coll.rank != 0:
            return
        self.store.save(
            self.spec["trial_id"],
            self.epoch,
            self._state(),
            best_epoch=self.best["epoch"],
            best_model=self.best["model"],
        )

    # ---- evaluation --------------------------------------------------------------------
    def _input(self, images: Tensor, *, train: bool = False) -> Tensor:
        """uint8 images -> model input of ``data.image_size`` on the device: augmented for
        training (``data.augment``), resized only for evaluation. The uint8 batch crosses to
        the device and the float work happens there."""
        images = images.to(self.device, non_blocking=True)
        if train:
            x = augment_batch(
                images, self.image_size, generator=self.augment_rng, settings=self.augment
            )
        else:
            x = eval_batch(images, self.image_size)
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def evaluate(self, data: LabeledImages, thresholds: Tensor | None = None) -> TaskMetrics:
        """Metrics on a whole split (F1 also at ``thresholds``, logits per task); under DDP each
        rank predicts a contiguous shard and every rank then holds all predictions, so every
        rank computes the same metrics."""
        n, world = len(data), self.coll.world_size
        per_rank = -(-n // world)
        start = min(n, self.coll.rank * per_rank)
        stop = min(n, start + per_rank)
        self.coll.sync_buffers(self.net)  # BatchNorm statistics drift apart between ranks
        self.model.eval()
        logits = torch.zeros(per_rank, data.num_tasks, device=self.device)
        step = 2 * self.batch_size
        for i in range(start, stop, step):
            j = min(stop, i + step)
            x = self._input(data.images[i:j])
            with self.train_step.autocast():
                logits[i - start : j - start] = self.net(x)[1].float()
        logits = self.coll.all_gather_cat(logits)[:n].cpu()
        self.model.train()
        if not bool(torch.isfinite(logits).all()):
            raise Diverged(f"non-finite predictions after epoch {self.epoch}")
        return task_metrics(logits, data.labels, data.mask, thresholds)

    # ---- training ----------------------------------------------------------------------
    def _train_epoch(self) -> tuple[Tensor, Tensor, Tensor]:
        """One pass over the training split. Returns, per task, the mean weight used, and the
        running loss and accuracy over the epoch's training batches (train mode, as DeepChest's
        reference code measures its signal), averaged over workers. A task's loss is averaged
        over the steps in which it had labels, its accuracy over its labels: NaN without any."""
        # a two-batch method (SDMGrad, MoDo) takes two mini-batches per step: an epoch is still
        # one pass over the data, in half as many steps, and every image counts as seen
        data = self.train_set
        bs = self.batch_size * getattr(self.method, "batches_per_step", 1)
        world, rank = self.coll.world_size, self.coll.rank
        global_batch = bs * world
        order = torch.Generator().manual_seed(self.spec["seed"] * 100_003 + self.epoch)
        # the augmentation's own stream, per epoch (a resumed trial draws what it would have)
        # and per worker (each worker's images get their own crops)
        self.augment_rng = torch.Generator().manual_seed(
            (self.spec["seed"] * 100_003 + self.epoch) * 1_009 + 17 + rank
        )
        perm = torch.randperm(len(data), generator=order)
        steps = len(data) // global_batch  # drop the ragged last batch (BatchNorm)
        weight_sum = torch.zeros(data.num_tasks, device=self.device)
        weighted_steps = torch.zeros((), device=self.device)
        loss_sum = torch.zeros(data.num_tasks, device=self.device)
        present_steps = torch.zeros(data.num_tasks, device=self.device)
        correct = torch.zeros(data.num_tasks, device=self.device)
        labeled = torch.zeros(data.num_tasks, device=self.device)
        timer, started = self.timer, time.perf_counter()
        if self.train_step.validation_batch is not None:
            self._val_batches = self._validation_batches()
        self.model.train()
        for step in range(steps):
            with timer.phase("data"):
                idx = perm[step * global_batch + rank * bs : step * global_batch + (rank + 1) * bs]
                x = self._input(data.images[idx], train=True)
                y = data.labels[idx].to(self.device, non_blocking=True)
                m = data.mask[idx].to(self.device, non_blocking=True)
            try:
                shared, weights, logits = self.train_step(x, y, m)
            except NonFiniteLoss as exc:
                bad = ", ".join(self.tasks[t] for t in exc.tasks)
                raise Diverged(
                    f"non-finite loss at epoch {self.epoch + 1}, step {step + 1} (tasks: {bad})"
                ) from None
            correct += (((logits > 0) == (y > 0.5)) & m).sum(0)
            labeled += m.sum(0)
            timer.end_step(len(idx) * world)
            # a skipped fp16 overflow step has NaN weights: the epoch's mean leaves it out
            # (without a host synchronisation)
            finite = torch.isfinite(weights).all()
            weight_sum += torch.where(finite, weights.float(), 0.0)
            weighted_steps += finite
            loss_sum += shared.float()
            present_steps += self.train_step.present
        self.train_time_s += time.perf_counter() - started
        counts = self.coll.all_reduce_mean(torch.stack([correct, labeled]))  # ratio of sums
        accuracy = torch.where(counts[1] > 0, counts[0] / counts[1].clamp(min=1), math.nan)
        weights = weight_sum / weighted_steps.clamp(min=1)
        loss = torch.where(present_steps > 0, loss_sum / present_steps.clamp(min=1), math.nan)
        return weights.cpu(), loss.cpu(), accuracy.cpu()

    def _validation_batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """This epoch's validation batches for a look-ahead method (Auto-Lambda): the
        validation split, never the test split, in an order drawn from the trial's seed and
        the epoch (a resumed trial draws the same), cycled; this worker's share of each."""
        data, bs = self.splits["val"], self.batch_size
        world, rank = self.coll.world_size, self.coll.rank
        order = torch.Generator().manual_seed(self.spec["seed"] * 100_003 + self.epoch + 7_919)
        while True:
            perm = torch.randperm(len(data), generator=order)
            for start in range(0, len(data) - bs * world + 1, bs * world):
                idx = perm[start + rank * bs : start + (rank + 1) * bs]
                yield (
                    self._input(data.images[idx]),
                    data.labels[idx].to(self.device, non_blocking=True),
                    data.mask[idx].to(self.device, non_blocking=True),
                )

    def _rows(
        self,
        split: str,
        metrics: TaskMetrics,
        epoch: int,
        weights: Tensor,
        thresholds: Tensor | None = None,
        tuned_f1: Tensor | None = None,
    ) -> list[dict]:
        """One row per task. ``thresholds`` (logits) and ``tuned_f1``: the operating threshold
        chosen on validation and the F1 there (val rows: chosen this epoch, in-sample; test rows:
        the best epoch's, applied to test); NaN on train rows."""
        total = float(weights.sum())
        nan = torch.full((len(self.tasks),), math.nan, dtype=torch.float64)
        probability = torch.sigmoid(thresholds.double()) if thresholds is not None else nan
        tuned_f1 = tuned_f1 if tuned_f1 is not None else nan
        return [
            {
                "epoch": epoch,
                "split": split,
                "task": task,
                "loss": float(metrics.loss[t]),
                "accuracy": float(metrics.accuracy[t]),
                "auroc": float(metrics.auroc[t]),
                "auprc": float(metrics.auprc[t]),
                "f1": float(metrics.f1[t]),
                "threshold": float(probability[t]),
                "f1_tuned": float(tuned_f1[t]),
                "weight": float(weights[t]),
                "weight_normalized": float(weights[t]) / total if total else math.nan,
                "n_labeled": int(metrics.n_labeled[t]),
                "n_positive": int(metrics.n_positive[t]),
                "train_time_s": self.train_time_s,
            }
            for t, task in enumerate(self.tasks)
        ]

    def run(self) -> dict[str, Any]:
        epochs = self.spec["train"]["epochs"]
        status, error = "completed", None
        try:
            while self.epoch < epochs:
                weights, train_loss, train_accuracy = self._train_epoch()
                self.epoch += 1
                train_m = self.evaluate(self.train_set)
                val_m = self.evaluate(self.splits["val"])
                self.method.on_epoch_end(
                    methods.EpochStats(
                        train_accuracy=train_accuracy.float(),
                        val_accuracy=val_m.accuracy.float(),
                        train_loss=train_loss.float(),
                        val_loss=val_m.loss.float(),
                    )
                )
                # an epoch without a finite val AUROC (a one-class val split) ranks lowest;
                # among such epochs the latest wins
                best = self.best["val_mean_auroc"]
                score = val_m.mean_auroc if math.isfinite(val_m.mean_auroc) else -math.inf
                if score > best or score == best == -math.inf:
                    self.best = {
                        "epoch": self.epoch,
                        "val_mean_auroc": score,
                        "model": copy.deepcopy(self.net.state_dict()),
                        # test F1 is measured at the operating points chosen on validation
                        "thresholds": val_m.f1_threshold.tolist(),
                    }
                rows = self._rows("train", train_m, self.epoch, weights)
                rows += self._rows(
                    "val", val_m, self.epoch, weights, val_m.f1_threshold, val_m.best_f1
                )
                self.rows += rows
                self._save()
                rows, self.unreported = self.unreported + rows, []
                self.reporter.report(
                    {
                        "epoch": self.epoch,
                        "done": False,
                        "train_mean_loss": float(train_loss.nanmean()),
                        "val_mean_auroc": val_m.mean_auroc,
                        "val_mean_accuracy": val_m.mean_accuracy,
                        "val_mean_loss": val_m.mean_loss,
                        "rows_json": json.dumps(rows),
                        # where this attempt runs (rank 0's node under several workers)
                        "node_json": json.dumps(this_node()),
                    }
                )
        except Diverged as exc:
            status, error = "diverged", str(exc)

        test_rows: list[dict[str, Any]] = []
        test_m = None
        if status == "completed":
            self.net.load_state_dict(self.best["model"])
            # a checkpoint written before thresholds were recorded has none: F1 there is NaN;
            # one written before f1_thresholds fell back to logit 0 (probability 0.5) for a
            # finding without a val positive has NaN there: the same fallback, so tuned F1
            # covers the same findings as F1 at 0.5
            chosen = self.best.get("thresholds")
            if chosen:
                thresholds = torch.tensor(chosen, dtype=torch.float64).nan_to_num(nan=0.0)
            else:
                thresholds = torch.full((len(self.tasks),), math.nan, dtype=torch.float64)
            test_m = self.evaluate(self.splits["test"], thresholds)
            best_weights = torch.tensor(
                [
                    r["weight"]
                    for r in self.rows
                    if r["epoch"] == self.best["epoch"] and r["split"] == "train"
                ]
            )
            test_rows = self._rows(
                "test", test_m, self.best["epoch"], best_weights, thresholds, test_m.tuned_f1
            )
        summary = {
            "status": status,
            "error": error,
            "epochs_completed": self.epoch,
            "best_epoch": self.best["epoch"],
            "val_mean_auroc": _finite_or_nan(self.best["val_mean_auroc"]),
            "test_mean_auroc": test_m.mean_auroc if test_m else math.nan,
            "test_mean_accuracy": test_m.mean_accuracy if test_m else math.nan,
            "test_mean_auprc": test_m.mean_auprc if test_m else math.nan,
            "test_macro_f1": test_m.macro_f1 if test_m else math.nan,
            "test_macro_f1_tuned": test_m.macro_tuned_f1 if test_m else math.nan,
            "test_exact_match": test_m.exact_match if test_m else math.nan,
            "test_trivial_exact_match": test_m.trivial_exact_match if test_m else math.nan,
            **{f"n_{split}": len(data) for split, data in self.splits.items()},
            "wall_time_s": self.prior_wall_s + time.perf_counter() - self.started,
            "train_time_s": self.train_time_s,
            # node, device ("cpu"/"cuda"), GPU model, CPU threads (and every worker's host)
            **trial_placement(self.device, self.coll),
            "workers": self.coll.world_size,
            **self.timer.summary(),
        }
        # the store keeps the last epoch state until the driver has recorded this final
        # report and prunes it (ResultsCollector): a crash in between loses nothing
        self.reporter.report(
            {
                "epoch": self.epoch,
                "done": True,
                "status": status,
                "test_mean_auroc": summary["test_mean_auroc"],
                "summary_json": json.dumps(summary),
                # the whole history: whatever a retry or a restore replayed, the driver ends
                # with exactly the rows of this trial's final state
                "rows_json": json.dumps(self.rows + test_rows),
            }
        )
        return {**summary, "rows": self.rows + test_rows}


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def train_trial(
    spec: dict[str, Any], reporter: Reporter, collective: Collective | None = None
) -> dict[str, Any]:
    """Run one trial to the end; returns its summary and every per-task row."""
    return _Trial(spec, reporter, collective or Collective()).run()
