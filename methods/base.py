"""Base classes shared by every task-weighting method.

Conventions (see docs/methods.md):

* A method is constructed once per training run for ``num_tasks`` tasks (``T``).
* Hyperparameters are declared once per method, as a nested dataclass ``Hyperparameters`` whose
  fields carry the defaults. ``methods.create``, ``methods.describe`` and validation all read that
  declaration, so adding a hyperparameter is one field (plus its check in ``__post_init__``).
* ``level`` says where a method acts. ``"loss"`` methods (``LossWeighting``) turn the detached
  per-task losses of a step into task weights; at the gradient levels (``"parameters"``,
  ``"representation"``: ``methods.gradient.GradientAggregator``; ``"last_shared_layer"``:
  GradNorm) a method receives the per-task gradients there as a Jacobian, built by the engine.
* Methods never call autograd: ``methods.engine`` does. A method may build the (differentiable)
  objective (``LossWeighting.objective``) and own learnable parameters (``parameters()``,
  ``optimizer_group()``, ``to(device)``), which the training loop adds to its optimizer.
* Weights are not normalised unless the method says so; equal weighting SUMS the losses (w = 1).
* Present tasks: a task is *present* in a step when at least one example of the batch (of any
  data-parallel worker) has its label; an absent task has loss 0 and a zero gradient. The engine
  passes ``present`` (Tensor[T] of bool) to the per-step calls (``weights``, ``objective``,
  GradNorm's ``weights_from_jacobian``); without it, ``present = losses > 0``
  (``resolve_present``). A method with state must leave an absent task's state as it was and
  update the present tasks exactly as the same method built for the present tasks alone would
  (docs/methods.md, "Masked tasks").
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelt ``name`` (difflib's
    ratio >= 0.6), else ``""``: the tail of an "unknown ..." message."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Where a method acts; ``methods.engine.backward`` dispatches on it.
LEVELS: tuple[str, ...] = ("loss", "representation", "parameters", "last_shared_layer")


# --------------------------------------------------------------------------------------------
# Epoch statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochStats:
    """Per-task statistics of one epoch, each a 1-D tensor of length ``T``.

    ``val_accuracy`` / ``val_loss`` are ``None`` when the run has no validation split. A task with
    no labels in a split has ``NaN`` there.
    """

    train_accuracy: Tensor
    train_loss: Tensor
    val_accuracy: Tensor | None = None
    val_loss: Tensor | None = None

    def __post_init__(self) -> None:
        length = None
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                if field.name.startswith("train_"):
                    raise ValueError(f"EpochStats.{field.name} is required, got None")
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"EpochStats.{field.name} must be a torch.Tensor, got {type(value).__name__}"
                )
            if value.ndim != 1:
                raise ValueError(
                    f"EpochStats.{field.name} must be 1-D (one value per task), "
                    f"got shape {tuple(value.shape)}"
                )
            if length is None:
                length = value.shape[0]
            elif value.shape[0] != length:
                raise ValueError(
                    f"EpochStats fields have different lengths: {field.name} has "
                    f"{value.shape[0]}, expected {length}"
                )

    @property
    def num_tasks(self) -> int:
        return self.train_accuracy.shape[0]


# --------------------------------------------------------------------------------------------
# Hyperparameter checks (raise ValueError without the "method 'x': " prefix; Method adds it)
# --------------------------------------------------------------------------------------------


class HyperparameterError(ValueError):
    """A hyperparameter value is not allowed. ``Method`` prefixes the message with its name."""


def check_number(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> float:
    """Return ``value`` as a finite float, or raise ``HyperparameterError`` naming the bounds."""
    bounds = []
    if gt is not None:
        bounds.append(f"> {gt:g}")
    if ge is not None:
        bounds.append(f">= {ge:g}")
    if le is not None:
        bounds.append(f"<= {le:g}")
    allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HyperparameterError(f"{name} must be {allowed}, got {value!r}")
    number = float(value)
    if (
        not math.isfinite(number)
        or (gt is not None and not number > gt)
        or (ge is not None and not number >= ge)
        or (le is not None and not number <= le)
    ):
        raise HyperparameterError(f"{name} must be {allowed}, got {value!r}")
    return number


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``HyperparameterError``."""
    if not isinstance(value, str) or value not in choices:
        raise HyperparameterError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def set_field(hp: Any, name: str, value: Any) -> None:
    """Store a normalised value on a frozen hyperparameter dataclass (from ``__post_init__``)."""
    object.__setattr__(hp, name, value)


def check_task_values(
    name: str, value: Any, *, positive: bool, item: str = "number"
) -> list[float] | dict[str, float] | None:
    """Check a per-task hyperparameter given as a list (one ``item`` per task, in task order) or
    a mapping task name -> ``item``; None passes. Returns it with its values as floats (and the
    keys as str). Raises ``HyperparameterError`` for a value that is not finite and ``> 0``
    (``positive``) or ``>= 0``, for another type, for an empty list or mapping, or for a list of
    zeros (no task would be trained). The number of tasks and the names are checked when the
    method is built (``task_values``)."""
    if value is None:
        return None
    gt, ge = (0.0, None) if positive else (None, 0.0)
    if isinstance(value, dict):
        checked: list[float] | dict[str, float] = {
            str(k): check_number(f"{name}[{k!r}]", v, gt=gt, ge=ge) for k, v in value.items()
        }
    elif isinstance(value, list | tuple):
        checked = [check_number(f"{name}[{i}]", v, gt=gt, ge=ge) for i, v in enumerate(value)]
    else:
        raise HyperparameterError(
            f"{name} must be a list (one per task) or a mapping task -> {item}, got {value!r}"
        )
    if not checked:
        raise HyperparameterError(f"{name} must not be empty")
    if isinstance(checked, list) and not any(checked):
        raise HyperparameterError(f"{name} are all 0: no task would be trained")
    return checked


def task_values(
    name: str,
    num_tasks: int,
    value: list[float] | dict[str, float] | None,
    task_names: Sequence[str] | None,
    *,
    item: str = "number",
) -> Tensor:
    """The float32 Tensor[T] of a per-task hyperparameter checked by ``check_task_values``: the
    list in task order, or the mapping over ones (tasks it does not name keep 1.0), or all ones
    for None. Raises ``HyperparameterError`` for a list of the wrong length, a mapping without
    ``task_names`` or naming an unknown task, or all values 0 (no task would be trained)."""
    values = task_value_list(name, num_tasks, value, task_names, item=item)
    return torch.tensor(values, dtype=torch.float32)


def task_value_list(
    name: str,
    num_tasks: int,
    value: list[float] | dict[str, float] | None,
    task_names: Sequence[str] | None,
    *,
    item: str = "number",
) -> list[float]:
    """``task_values`` as a list of floats, with its checks: pure Python, no tensor."""
    if value is None:
        return [1.0] * num_tasks
    if isinstance(value, dict):
        if task_names is None:
            raise HyperparameterError(f"{name}: a mapping by task name needs the task names")
        unknown = [k for k in value if k not in task_names]
        if unknown:
            raise HyperparameterError(
                f"{name}: unknown task {unknown[0]!r}; tasks: {', '.join(task_names)}"
            )
        values = [float(value.get(task, 1.0)) for task in task_names]
    else:
        if len(value) != num_tasks:
            raise HyperparameterError(
                f"{name} has {len(value)} values for {num_tasks} tasks (give one per task, or a "
                f"mapping task -> {item})"
            )
        values = [float(v) for v in value]
    if not any(values):  # on the floats: 1e-50 counts as given, although float32 rounds it to 0
        raise HyperparameterError(f"{name} are all 0: no task would be trained")
    return values


def resolve_present(losses: Tensor, present: Tensor | None = None) -> Tensor:
    """The tasks present in this step: ``present`` (Tensor[T] of bool) when given, else
    ``losses > 0``; on ``losses``' device.

    ``losses > 0`` is exact for ``deepchest.metrics.masked_task_losses`` (a task without a
    labelled example gets exactly 0; a labelled one a positive cross-entropy) and, applied to
    all-reduced (mean) losses, is the OR over the workers. Raises ``ValueError`` for a
    ``present`` that is not a bool tensor of the losses' shape.
    """
    if present is None:
        return losses.detach() > 0
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        kind = present.dtype if isinstance(present, torch.Tensor) else type(present).__name__
        raise ValueError(f"present must be a bool Tensor (one flag per task), got {kind}")
    if present.shape != losses.shape:
        raise ValueError(
            f"present must have the losses' shape {tuple(losses.shape)}, got {tuple(present.shape)}"
        )
    return present.to(losses.device)


@dataclass(frozen=True)
class NoHyperparameters:
    """The hyperparameter declaration of a method that has none."""


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


class Method:
    """A task-weighting method for ``num_tasks`` tasks.

    Subclasses set the class attributes ``name``, ``level`` and ``summary`` (one line), declare
    ``Hyperparameters`` (a frozen dataclass whose field defaults are the method's defaults) and
    override ``_state`` / ``_load_state`` if they carry state across steps.
    """

    name: ClassVar[str]
    level: ClassVar[str]
    summary: ClassVar[str]
    Hyperparameters: ClassVar[type] = NoHyperparameters
    #: Where the method comes from: the paper (authors, venue and year, arXiv id) and, where it
    #: differs, the reference code the implementation follows; ``harness methods`` shows it.
    reference: ClassVar[str] = ""
    #: The cost class ``harness methods`` shows; empty: derived from the level
    #: (``methods.cost_class``).
    cost: ClassVar[str] = ""
    #: What the task heads get at the gradient levels when the experiment does not say
    #: (``train.heads: method``): ``"own"`` (each head its own loss's gradient) or
    #: ``"weighted"`` (``w_t`` times it), as in the method's reference code (docs/methods.md).
    default_heads: ClassVar[str] = "weighted"
    #: True when ``on_step_end`` needs the losses of the same batch after the optimizer step.
    needs_losses_after: ClassVar[bool] = False
    #: The first epoch (1-based) whose weights can differ from the initial ones. Methods that
    #: update only in ``on_epoch_end`` need at least this many epochs to be more than a fixed
    #: weighting; ``harness validate`` and ``harness run`` warn when ``train.epochs`` is fewer.
    first_reweighted_epoch: ClassVar[int] = 1

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise self._error(f"num_tasks must be a positive int, got {num_tasks!r}")
        if task_names is not None:
            if isinstance(task_names, str) or not all(isinstance(n, str) for n in task_names):
                raise self._error(f"task_names must be a sequence of str, got {task_names!r}")
            task_names = list(task_names)
            if len(task_names) != num_tasks:
                raise self._error(
                    f"task_names has {len(task_names)} names but num_tasks is {num_tasks}"
                )
            if len(set(task_names)) != len(task_names):
                raise self._error(f"task_names must be unique, got {task_names}")
        self.num_tasks: int = num_tasks
        self.task_names: list[str] | None = task_names
        self.hp = self._resolve(hyperparameters)

    @classmethod
    def check_arguments(
        cls, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        """Raise the ``ValueError`` that ``cls(num_tasks, task_names, **hyperparameters)`` would
        raise, without building the method: pure Python, no tensor, so that ``harness validate``
        checks an experiment file without loading torch. It runs ``Method.__init__`` (with the
        subclass's ``_resolve``, which only checks) and then ``_check_arguments``, the checks of
        the subclass's own constructor."""
        probe = cls.__new__(cls)
        Method.__init__(probe, num_tasks, task_names, **hyperparameters)
        probe._check_arguments()

    def _check_arguments(self) -> None:
        """What this method's constructor checks beyond ``Method.__init__`` (the hyperparameters
        given per task, a file it reads), in pure Python. Nothing by default."""

    # ---- hyperparameters ------------------------------------------------------------------

    @classmethod
    def hyperparameter_defaults(cls) -> dict[str, Any]:
        """The declared hyperparameters and their defaults, in declaration order."""
        return {f.name: f.default for f in dataclasses.fields(cls.Hyperparameters)}

    def _resolve(self, given: dict[str, Any]) -> Any:
        valid = self.hyperparameter_defaults()
        for key in given:
            if key not in valid:
                listed = ", ".join(sorted(valid)) if valid else "(none)"
                hint = did_you_mean(key, valid)
                raise self._error(f"unknown hyperparameter {key!r}{hint}; valid: {listed}")
        try:
            return self.Hyperparameters(**given)
        except HyperparameterError as exc:
            raise self._error(str(exc)) from None

    def hyperparameters(self) -> dict[str, Any]:
        """The resolved hyperparameter values (defaults filled in)."""
        return dataclasses.asdict(self.hp)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"method {self.name!r}: {message}")

    def _task_values(self, name: str, value: Any, *, item: str = "number") -> Tensor:
        """``task_values`` of a hyperparameter for this method's tasks, its errors prefixed."""
        return torch.tensor(self._task_value_list(name, value, item=item), dtype=torch.float32)

    def _task_value_list(self, name: str, value: Any, *, item: str = "number") -> list[float]:
        """``_task_values`` as a list of floats (pure Python: ``_check_arguments``)."""
        try:
            return task_value_list(name, self.num_tasks, value, self.task_names, item=item)
        except HyperparameterError as exc:
            raise self._error(str(exc)) from None

    # ---- hooks ----------------------------------------------------------------------------

    def on_epoch_end(self, stats: EpochStats) -> None:  # noqa: B027 - optional hook
        """Called once at the end of every training epoch (after validation). No-op by default."""

    def on_step_end(self, losses_after: Tensor | None = None) -> None:  # noqa: B027
        """Called after the optimizer step. No-op by default.

        ``losses_after``: the per-task losses of the same batch after the step, given to methods
        whose class sets ``needs_losses_after = True`` (FAMO), else None."""

    # ---- learnable parameters (e.g. uncertainty's log-variances) ----------------------------

    def parameters(self) -> list[torch.nn.Parameter]:
        """The method's own learnable parameters (``[]`` by default).

        The training loop must optimise them (see ``optimizer_group``) after ``to(device)``.
        """
        return []

    def optimizer_group(self) -> dict[str, Any] | None:
        """A torch optimizer param group for ``parameters()``, or ``None`` when there are none.

        ``{"params": [...], "weight_decay": 0.0}`` by default (the optimizer's own lr); methods
        with their own learning rate add ``"lr"``. Add it with ``optimizer.add_param_group`` or
        pass it in the optimizer's list of groups.
        """
        params = self.parameters()
        if not params:
            return None
        return {"params": params, "weight_decay": 0.0}

    def to(self, device: torch.device | str) -> Method:
        """Move the method's parameters to ``device``, in place (the same ``Parameter`` objects).

        No-op for methods without parameters. Call it before building the optimizer. Returns self.
        """
        with torch.no_grad():
            for p in self.parameters():
                p.data = p.data.to(device)
        return self

    # ---- checkpointing --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and python values only (loadable with ``torch.load(weights_only=True)``).

        ``hyperparameters`` is stored for information; ``load_state_dict`` restores ``state`` only.
        """
        return {
            "method": self.name,
            "num_tasks": self.num_tasks,
            "hyperparameters": self.hyperparameters(),
            "state": self._state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") != self.name:
            raise self._error(f"cannot load a state_dict of method {state_dict.get('method')!r}")
        if state_dict.get("num_tasks") != self.num_tasks:
            raise self._error(
                f"cannot load a state_dict for {state_dict.get('num_tasks')!r} tasks into a "
                f"method for {self.num_tasks} tasks"
            )
        self._load_state(state_dict.get("state", {}))

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless default
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(num_tasks={self.num_tasks}{', ' if args else ''}{args})"


class LossWeighting(Method):
    """A method acting on the per-task losses: by default the objective is ``sum_t w_t * L_t``.

    Subclasses implement ``compute_weights`` (or ``compute_present_weights`` when the weights
    depend on which tasks are present); ``weights`` checks the input and returns the result
    detached, as float32, on ``losses.device``. A method whose objective is not a weighted sum, or
    has its own learnable parameters (uncertainty weighting), also overrides ``objective``.
    """

    level: ClassVar[str] = "loss"

    def weights(self, losses: Tensor, *, present: Tensor | None = None) -> Tensor:
        """The task weights ``w`` (Tensor[T]) for this step, from the detached per-task losses.

        ``present``: the tasks with labels in this step (``resolve_present``)."""
        if not isinstance(losses, torch.Tensor) or losses.shape != (self.num_tasks,):
            shape = (
                tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            )
            raise self._error(f"losses must be a Tensor of shape ({self.num_tasks},), got {shape}")
        w = self.compute_present_weights(losses.detach(), self._present(losses, present))
        return w.detach().to(device=losses.device, dtype=torch.float32).clone()

    def _present(self, losses: Tensor, present: Tensor | None) -> Tensor:
        try:
            return resolve_present(losses, present)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        """The weights of a step in which the tasks ``present`` (Tensor[T] of bool) have labels.

        Default: ``compute_weights(losses)``, for methods whose per-step weights keep no state
        (an absent task's loss is 0, so its weight changes nothing)."""
        return self.compute_weights(losses)

    def compute_weights(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """The scalar that ``engine.backward`` back-propagates for this step.

        ``losses`` are the per-task losses WITH grad (this worker's), ``reduced`` the detached
        (e.g. all-reduced) copy the weights were computed from, ``weights`` this step's
        ``self.weights(reduced, present=present)`` (computed once per step, so a random method
        draws once) and ``present`` the tasks with labels in this step (``None``:
        ``reduced > 0``). Default: ``sum_t w_t L_t``.
        """
        return (weights * losses).sum()
