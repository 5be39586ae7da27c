"""Loss weightings that learn one log-scale per task (uncertainty weighting, IMTL-L)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import LossWeighting, check_number, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


@dataclass(frozen=True)
class TaskScalesHyperparameters:
    """``lr``: the learning rate of ``s`` in its own optimizer group (``optimizer_group``)."""

    lr: float = 0.025

    def __post_init__(self) -> None:
        set_field(self, "lr", check_number("lr", self.lr, gt=0))


class LearnedTaskScales(LossWeighting):
    """A loss weighting whose objective ``f(L, s)`` has learnable per-task log-scales ``s``
    (Tensor[T], init 0): one ``Parameter`` in its own optimizer group (the hyperparameter ``lr``,
    no weight decay), checkpointed as one tensor.

    Subclasses set ``scale_name`` (the attribute that holds ``s`` and its checkpoint key, e.g.
    ``log_var``) and implement ``scaled_objective`` and ``scale_weights``. The training loop must
    call ``to(device)`` and add ``optimizer_group()`` to its optimizer.

    Masked tasks: ``scaled_objective`` sums over the present tasks only, so an absent task's
    ``s_t`` gets gradient 0; ``on_step_end`` still puts back the ``s_t`` of the tasks absent in
    the step as they were before the optimizer step, because the optimizer's momentum (Adam's
    moments) would otherwise still move them with a zero gradient. The tasks do not interact: the
    present tasks' ``s`` follow exactly the trajectory of the method built for them alone.
    """

    Hyperparameters = TaskScalesHyperparameters
    #: The attribute holding ``s`` and its key in the checkpoint (``state_dict()["state"]``).
    scale_name: ClassVar[str]

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        scales = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float32))
        setattr(self, self.scale_name, scales)
        #: (present, s before the step), from ``objective`` to ``on_step_end``
        self._held: tuple[Tensor, Tensor] | None = None

    @property
    def scales(self) -> torch.nn.Parameter:
        """``s``, read through ``scale_name`` (so assigning ``method.log_var`` replaces it)."""
        return getattr(self, self.scale_name)

    def scaled_objective(self, losses: Tensor, scales: Tensor, present: Tensor) -> Tensor:
        """The scalar objective of ``losses`` and ``scales`` over the ``present`` tasks."""
        raise NotImplementedError

    def scale_weights(self, scales: Tensor, present: Tensor) -> Tensor:
        """The reported weights ``dObjective/dL_t`` for the (detached) ``scales``."""
        raise NotImplementedError

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.scales]

    def optimizer_group(self) -> dict[str, Any]:
        return {"params": [self.scales], "lr": self.hp.lr, "weight_decay": 0.0}

    def _check_device(self, losses: Tensor) -> None:
        if self.scales.device != losses.device:
            raise self._error(
                f"parameters are on {self.scales.device} but the losses on {losses.device}; "
                "call method.to(device) before building the optimizer"
            )

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        self._check_device(losses)
        return self.scale_weights(self.scales.detach(), present)

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``scaled_objective(L~, s)`` with ``L~ = losses - losses.detach() + reduced``, over the
        ``present`` tasks (default ``reduced > 0``).

        ``L~`` has the value of the reduced losses (so the gradient w.r.t. ``s`` is the same on
        every DDP worker and ``s`` stays in sync) and the gradient of this worker's losses w.r.t.
        the model (which DDP averages). Without ``reduce`` ``L~ == losses`` exactly
        (x - x + x == x in floats).
        """
        self._check_device(losses)
        present = self._present(reduced, present)
        self._held = (present, self.scales.detach().clone())
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return self.scaled_objective(mixed, self.scales, present)

    def on_step_end(self, losses_after: Tensor | None = None) -> None:
        """Put back the ``s_t`` of the tasks absent in this step (no device synchronisation)."""
        if self._held is None:
            return
        present, before = self._held
        self._held = None
        with torch.no_grad():
            self.scales.copy_(torch.where(present, self.scales, before))

    def _state(self) -> dict[str, Any]:
        return {self.scale_name: self.scales.detach().to("cpu").clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        s = state.get(self.scale_name)
        if not isinstance(s, torch.Tensor) or s.shape != (self.num_tasks,):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else repr(s)
            raise self._error(
                f"state_dict {self.scale_name} must be a Tensor[{self.num_tasks}], got {shape}"
            )
        scales = self.scales
        with torch.no_grad():  # in place: the optimizer keeps the same Parameter
            scales.copy_(s.to(device=scales.device, dtype=scales.dtype))
        self._held = None
