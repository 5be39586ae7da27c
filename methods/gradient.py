"""Shared pieces of the gradient-level methods (``GradientAggregator`` and the pure functions
several of them use).

A gradient-level method aggregates the per-task gradients of the shared parameters: it receives
the Jacobian ``J`` (Tensor[T, n], row ``t`` = gradient of task ``t``'s loss) and the detached
losses, and returns ``(direction, weights)`` with ``direction = weights @ J`` (Tensor[n], written
into the shared parameters' ``.grad``; the optimizer descends along it) and ``weights``
(Tensor[T], the task weights the method effectively used). The exceptions set
``direction_is_weighted_jacobian = False`` (GradDrop, DB-MTL, MoCo: their own direction).

Most methods need only the Gramian ``G = J J^T`` (Tensor[T, T]) to find their weights
(GradDrop, GradVac's tracking, ExcessMTL, DB-MTL and MoCo also read ``J``'s entries).
``GradientAggregator.aggregate`` computes it once (``solver_gramian``) and hands it to the
method's ``compute``. The small ``T x T`` problems are solved on the CPU in float64 (a few
microseconds; it also avoids the round-off of float32 and a device synchronisation per solver
iteration); the Gramian and the direction are computed in the input dtype on the input device.

Non-finite Gramian (one rule, in ``aggregate``, for every method): when ``G`` or its trace
``||J||_F^2`` is not finite (a non-finite ``J``, e.g. an fp16 step whose scaled gradients
overflowed, or a finite ``J`` whose products overflow ``J``'s dtype: rows of norm above about
1.8e19 in float32), no solver runs and ``direction`` and ``weights`` are NaN, so the step is
skipped by ``GradScaler`` (``gramian_is_finite``).

Reference implementations used by the tests: ``torchjd.aggregation`` (torchjd 0.18.0).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import HyperparameterError, Method, check_choice, check_number, resolve_present

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int ``>= 1``, else raise ``HyperparameterError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperparameterError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def gramian(jacobian: Tensor) -> Tensor:
    """``G = J J^T`` (Tensor[T, T]): ``G_ij = g_i . g_j``."""
    return jacobian @ jacobian.T


def solver_gramian(jacobian: Tensor) -> Tensor:
    """``G = J J^T`` in the input dtype, then moved to the CPU as float64 for the small solvers."""
    return gramian(jacobian).to(device="cpu", dtype=torch.float64)


def gramian_is_finite(g: Tensor) -> bool:
    """Whether every entry of the solver Gramian ``g`` and its trace ``||J||_F^2`` are finite.

    A non-finite ``J`` always fails it (``G_tt = sum_k J_tk^2``); so does a finite ``J`` whose
    Gramian overflowed in ``J``'s dtype (float32 rows of norm above about 1.8e19), or whose trace
    overflows float64 (the solvers divide ``G`` by it). ``g``: the small CPU Tensor[T, T] of
    ``solver_gramian`` (the check costs no device work).
    """
    return bool(torch.isfinite(g).all()) and math.isfinite(float(g.diagonal().sum()))


def combine(weights: Tensor, jacobian: Tensor) -> Tensor:
    """``d = w^T J = sum_t w_t g_t`` (Tensor[n]), in ``J``'s dtype and on its device."""
    return weights.to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian


def trace_normalized(g: Tensor, eps: float = 0.0) -> Tensor:
    """``G / tr(G)`` (``tr(G) = ||J||_F^2``), or the zero matrix when ``tr(G) <= eps``.

    Scaling ``G`` by a positive number does not change the weights of MGDA, UPGrad (up to its
    regularisation) or IMTL-G; normalising makes the solvers' tolerances relative to the scale of
    the gradients.
    """
    trace = float(g.diagonal().sum())
    if not trace > eps:
        return torch.zeros_like(g)
    return g / trace


def nonnegative_qp(q: Tensor, c: Tensor, *, max_iters: int, tol: float) -> Tensor:
    """Solve ``min_x 1/2 x^T Q x + c^T x  subject to  x >= 0`` for a positive-definite ``Q``.

    Primal active-set method (Lawson & Hanson's NNLS algorithm written for a quadratic): start at
    ``x = 0``; while some coordinate ``j`` outside the free set ``P`` has a negative gradient
    ``(Q x + c)_j < -tol``, free the most negative one, solve the equality-constrained problem on
    ``P`` (``Q_PP z_P = -c_P``) and, if ``z_P`` leaves the orthant, step from ``x`` towards ``z``
    as far as feasible and drop the coordinates that hit zero. Exact after finitely many steps
    (``max_iters`` bounds the number of inner solves; the iterate stays feasible). ``tol`` is
    relative to ``1 + max|Q||x| + max|c|``.

    Returns ``x`` (Tensor[T]). ``Q``, ``c``: Tensor[T, T], Tensor[T] (float64 advised).
    """
    size = c.shape[0]
    x = torch.zeros_like(c)
    free = torch.zeros(size, dtype=torch.bool)
    iters = 0
    while iters < max_iters:
        grad = q @ x + c
        scale = 1.0 + float((q.abs() @ x.abs()).max()) + float(c.abs().max())
        candidates = (~free) & (grad < -tol * scale)
        if not bool(candidates.any()):
            break
        j = int(torch.where(candidates, grad, torch.zeros_like(grad)).argmin())
        free[j] = True
        while iters < max_iters:
            iters += 1
            idx = free.nonzero().flatten()
            z = torch.zeros_like(x)
            sub = q[idx][:, idx]
            z[idx] = torch.linalg.solve(sub, -c[idx])
            if bool((z[idx] > 0).all()):
                x = z
                break
            blocking = idx[z[idx] <= 0]
            alpha = float((x[blocking] / (x[blocking] - z[blocking])).min())
            x = x + alpha * (z - x)
            leaving = free & (x <= tol * x.abs().max().clamp(min=1.0))
            x[leaving] = 0.0
            free &= ~leaving
            if not bool(free.any()):
                break
    return x.clamp(min=0.0)


def project_onto_simplex(y: Tensor) -> Tensor:
    """The Euclidean projection of ``y`` (Tensor[T], finite) onto ``{x : x >= 0, sum x = 1}``.

    ``x = max(y - theta, 0)`` with ``theta = (sum_{j <= k} u_j - 1) / k``, ``u`` = ``y`` sorted
    in decreasing order and ``k`` the largest index with ``u_k > theta_k`` (Held, Wolfe &
    Crowder 1974; Duchi et al., ICML 2008); ``k = 1`` always qualifies. ``y`` is first shifted
    by its maximum (the projection does not change when a constant is added to every entry):
    with entries far above 1 (e.g. 1e16, SDMGrad's steps on a near-zero scale) the unshifted
    ``u_1 - theta_1 = 1`` rounds to 0 and the result leaves the simplex (torchjd's returns 0).
    """
    y = y - y.max()
    u = torch.sort(y, descending=True).values
    excess = torch.cumsum(u, dim=0) - 1.0
    count = torch.arange(1, y.shape[0] + 1, dtype=y.dtype)
    qualifies = u * count > excess
    qualifies[0] = True  # u_1 = 0 > -1 = excess_1: exact after the shift, kept for clarity
    k = int(qualifies.nonzero().max())
    return (y - excess[k] / (k + 1)).clamp(min=0.0)


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class GradientAggregator(Method):
    """A method that turns the Jacobian of the per-task losses into one update direction.

    Subclasses implement ``compute(jacobian, losses, gramian) -> (direction, weights)``, with
    ``gramian = solver_gramian(jacobian)``, always finite; ``aggregate`` checks the input,
    computes the Gramian, applies the non-finite rule and returns both detached, in
    ``jacobian``'s dtype and on its device.

    Present tasks (``aggregate(..., present=)``): a stateless method is run on the present
    tasks' rows only (``compute`` sees the Jacobian of the labelled tasks, as the same method
    built for them alone would) and an absent task gets weight 0; without this, a zero row would
    make MGDA's min-norm point 0 and stall the step. A method with state overrides
    ``compute_present(jacobian, losses, gramian, present)`` and keeps an absent task's state.

    Every gradient-level method also takes two hyperparameters of its own, handled here:

    * ``ema`` (CR-MOGM, Zhou et al., NeurIPS 2022, *On the Convergence of Stochastic
      Multi-Objective Gradient Manipulation and Beyond*): the weights used are
      ``lambda_k = ema * lambda_{k-1} + (1 - ema) * w_k`` with ``w_k`` the method's own weights and
      ``lambda_0 = w_1`` (per task: a task's first present step starts its average); the
      direction is ``lambda_k^T J``. ``ema = 0`` (default) is the method itself. As
      ``torchjd.aggregation.CRMOGMWeighting(alpha=ema)``.
    * ``update_every`` (``k``, default 1): the Jacobian and the weights are computed every ``k``
      steps; in between the engine back-propagates ``sum_t w_t L_t`` with the last weights (one
      ordinary backward: Nash-MTL's ``update_weights_every``). A step in which a task is present
      that was absent when the weights were computed computes them anew (``reuse_weights``).
    """

    level: ClassVar[str] = "parameters"
    #: the authors' code of most gradient-level methods back-propagates each task's own loss
    #: into its head and overwrites only the shared gradients; MGDA, Nash-MTL and ExcessMTL,
    #: which weight the heads too, override this
    default_heads: ClassVar[str] = "own"
    #: Where ``J`` is taken (hyperparameter ``level``): the shared parameters (``J`` [T, n]) or
    #: the shared representation (``J`` [T, B*d], every sample kept: MGDA-UB for ``mgda``).
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters", "representation")
    #: mini-batches per optimisation step: 2 for methods that need two independent Jacobian
    #: estimates (SDMGrad, MoDo: ``pair_weights``); the loop then draws two batches per step
    batches_per_step: ClassVar[int] = 1
    #: False for methods whose direction is not ``weights @ J`` (MoCo: ``Y^T lambda`` of a
    #: tracked Jacobian; DB-MTL: a combination of gradient EMAs; GradDrop: per-coordinate
    #: masks): they report weights for logging and the heads, the engine applies their own
    #: direction, and ``ema`` / ``update_every`` are refused
    direction_is_weighted_jacobian: ClassVar[bool] = True
    #: the hyperparameters every gradient-level method takes, with their defaults
    COMMON: ClassVar[dict[str, Any]] = {"update_every": 1, "ema": 0.0}

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        # CR-MOGM's average (NaN: the task has not been present yet) and update_every's cache
        self._ema_weights = torch.full((self.num_tasks,), math.nan, dtype=torch.float64)
        self._cached: Tensor | None = None  # the last computed weights [T], float64, CPU
        self._cached_present: Tensor | None = None  # the tasks present when they were computed
        self._steps_since = 0  # steps since they were computed
        self._scratch: dict[str, Tensor] = {}  # see scratch()

    @classmethod
    def hyperparameter_defaults(cls) -> dict[str, Any]:
        return {"level": cls.level, **super().hyperparameter_defaults(), **cls.COMMON}

    def _resolve(self, given: dict[str, Any]) -> Any:
        given = dict(given)
        level = given.pop("level", type(self).level)
        common = {k: given.pop(k, v) for k, v in self.COMMON.items()}
        try:
            # an instance attribute: the engine reads ``method.level`` to pick where J is taken
            self.level = check_choice("level", level, self.AGGREGATION_LEVELS)
            self.update_every = check_positive_int("update_every", common["update_every"])
            self.ema = check_number("ema", common["ema"], ge=0, le=1)
            if not self.direction_is_weighted_jacobian:
                # both replace the update by a combination of the weights, which for these
                # methods is not their update
                for key, off in (("ema", 0.0), ("update_every", 1)):
                    if getattr(self, key) != off:
                        raise HyperparameterError(
                            f"{key} must be {off:g} ({self.name}'s update is not a weighted "
                            f"sum of the task gradients), got {common[key]!r}"
                        )
        except HyperparameterError as exc:
            raise self._error(str(exc)) from None
        return super()._resolve(given)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "level": self.level,
            **super().hyperparameters(),
            "update_every": self.update_every,
            "ema": self.ema,
        }

    # ---- per-coordinate state ([T, n], as large as J) ---------------------------------------

    def coordinate_state(self, state: Tensor | None, jacobian: Tensor, what: str) -> Tensor:
        """``state`` (Tensor[T, n]: ExcessMTL's squared sums, DB-MTL's and MoCo's averaged
        gradients) on ``J``'s device in ``J``'s dtype, at least float32; zeros at the first
        step (``state`` None). Raises ``ValueError`` for a ``J`` of another width (``what``
        names the state in the message)."""
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        if state is None:
            return torch.zeros(jacobian.shape, dtype=dtype, device=jacobian.device)
        if state.shape != jacobian.shape:
            raise self._error(
                f"the Jacobian has {jacobian.shape[1]} columns but the {what} "
                f"{'have' if what.endswith('s') else 'has'} {state.shape[1]}"
            )
        return state.to(device=jacobian.device, dtype=dtype)

    def scratch(self, name: str, like: Tensor) -> Tensor:
        """An uninitialised buffer of ``like``'s shape, dtype and device, kept from step to step
        (not in the state_dict): where the per-coordinate updates of ExcessMTL, DB-MTL and
        MoCo write their [T, n] intermediates when every task is present. A fresh CPU tensor
        of that size costs its page faults at every step: on 2 cores, T = 14, n = 4M, the
        ExcessMTL update took 430-840 ms with fresh temporaries and 60-90 ms with two such
        buffers, for the same arithmetic."""
        buffer = self._scratch.get(name)
        if (
            buffer is None
            or buffer.shape != like.shape
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = self._scratch[name] = torch.empty_like(like)
        return buffer

    # ---- the shared gradient's norm ---------------------------------------------------------

    @property
    def shared_max_norm(self) -> float | None:
        """The norm to which the shared parameters' gradient is clipped after the method's
        update (Nash-MTL's ``max_norm``), or None. ``compute`` clips ``direction``
        (``clip_shared``); the engine clips the shared ``.grad`` where it does not write
        ``direction`` itself (the representation level, the ``update_every`` reuse steps)."""
        return None

    def clip_shared(self, direction: Tensor) -> Tensor:
        """``direction`` scaled down to norm ``shared_max_norm`` when longer (as
        ``torch.nn.utils.clip_grad_norm_`` on the shared parameters)."""
        limit = self.shared_max_norm
        if limit is None:
            return direction
        norm = float(torch.linalg.vector_norm(direction))
        return direction * (limit / norm) if norm > limit else direction

    # ---- update_every ---------------------------------------------------------------------

    def reuse_weights(self, present: Tensor) -> Tensor | None:
        """The weights to reuse for this step instead of a new Jacobian, or None to compute.

        With ``update_every = k``: the weights of the last computation, for the ``k - 1`` steps
        after it, unless a task is present now that was absent then. Counts the step when it
        returns weights (call it once per step, before ``aggregate``)."""
        if self._cached is None or self._steps_since + 1 >= self.update_every:
            return None
        present = present.cpu()
        if bool((present & ~self._cached_present).any()):
            return None
        self._steps_since += 1
        return self._cached.clone()

    def _remember(self, weights: Tensor, present: Tensor) -> None:
        if self.update_every > 1 and bool(torch.isfinite(weights).all()):
            self._cached = weights.detach().to("cpu", torch.float64).clone()
            self._cached_present = present.cpu().clone()
            self._steps_since = 0

    # ---- the aggregation ------------------------------------------------------------------

    def _check_jacobian(self, jacobian: Tensor, what: str = "jacobian") -> None:
        num_tasks = self.num_tasks
        if (
            not isinstance(jacobian, torch.Tensor)
            or jacobian.ndim != 2
            or jacobian.shape[0] != num_tasks
        ):
            shape = tuple(jacobian.shape) if isinstance(jacobian, torch.Tensor) else type(jacobian)
            raise self._error(f"{what} must be a Tensor of shape ({num_tasks}, n), got {shape}")
        if not jacobian.is_floating_point():
            raise self._error(f"{what} must be floating point, got {jacobian.dtype}")

    def _check_losses(self, losses: Tensor, present: Tensor | None) -> Tensor:
        if not isinstance(losses, torch.Tensor) or losses.shape != (self.num_tasks,):
            shape = (
                tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            )
            raise self._error(f"losses must be a Tensor of shape ({self.num_tasks},), got {shape}")
        if present is None:  # a direct call: every task is present
            return torch.ones(self.num_tasks, dtype=torch.bool)
        try:
            return resolve_present(losses, present).cpu()
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def aggregate(
        self, jacobian: Tensor, losses: Tensor, *, present: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(direction [n], weights [T])`` from ``jacobian`` [T, n] and detached ``losses`` [T].

        ``direction = weights @ jacobian`` is gradient-like: write it into the shared parameters'
        ``.grad`` and let the optimizer descend. ``present`` (Tensor[T] of bool, default all
        True): the tasks with labels in this step; an absent task gets weight 0 and leaves the
        method's state as it was. When the Gramian ``J J^T`` (in ``jacobian``'s dtype) or its
        trace is not finite, both are NaN and the method's solver is not called:
        ``GradScaler`` then skips the step, as for any non-finite gradient.
        """
        self._check_jacobian(jacobian)
        present = self._check_losses(losses, present)
        with torch.no_grad():
            jacobian, losses = jacobian.detach(), losses.detach()
            gramian = solver_gramian(jacobian)
            if gramian_is_finite(gramian):
                direction, weights = self.compute_present(jacobian, losses, gramian, present)
            else:
                direction, weights = self._nan(jacobian)
        return self._smoothed(direction, weights, jacobian, present)

    def aggregate_pair(
        self,
        first: Tensor,
        second: Tensor,
        losses: Tensor,
        *,
        present: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two-batch methods (``batches_per_step = 2``): ``(direction [n], weights [T])`` from
        the Jacobians ``first``, ``second`` [T, n] of two independent mini-batches and the
        detached losses [T] (their mean).

        The weights come from ``pair_weights(A, present)`` with ``A = J_1 J_2^T`` (float64, CPU;
        not symmetric in general); the direction is ``w^T (J_1 + J_2) / 2``, the gradient of the
        weighted mean loss of both batches (MoDo, eq. 2.9b). NaN when ``A`` or either
        Gramian's trace is not finite, as for ``aggregate``.
        """
        self._check_jacobian(first, "first")
        self._check_jacobian(second, "second")
        if first.shape != second.shape:
            raise self._error(f"the two Jacobians differ in shape: {first.shape} vs {second.shape}")
        present = self._check_losses(losses, present)
        with torch.no_grad():
            first, second = first.detach(), second.detach()
            cross = (first @ second.T).to(device="cpu", dtype=torch.float64)
            traces = torch.stack(
                [(j * j).sum().to(device="cpu", dtype=torch.float64) for j in (first, second)]
            )
            mean = (first + second) / 2
            if bool(torch.isfinite(cross).all()) and bool(torch.isfinite(traces).all()):
                weights = self.pair_weights(cross, present)
                direction = combine(weights, mean)
            else:
                direction, weights = self._nan(mean)
        return self._smoothed(direction, weights, mean, present)

    def _nan(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        # an inf/NaN Jacobian (an fp16 step whose scaled gradients overflowed) or a finite one
        # whose Gramian overflowed: no solver can use G, so return NaN, as a plain backward of an
        # inf gradient would, and GradScaler skips the step (the check is on the small CPU
        # Gramian, which every method computes anyway)
        direction = torch.full_like(jacobian[0], torch.nan)
        return direction, torch.full((self.num_tasks,), torch.nan, dtype=jacobian.dtype)

    def _smoothed(
        self, direction: Tensor, weights: Tensor, jacobian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """CR-MOGM's average of the weights (``ema > 0``), the ``update_every`` cache, and the
        result in ``jacobian``'s dtype and on its device."""
        if self.ema > 0 and bool(torch.isfinite(weights).all()):
            new = weights.detach().to("cpu", torch.float64)
            old = self._ema_weights
            started = present & ~torch.isnan(old)
            averaged = torch.where(started, self.ema * old + (1 - self.ema) * new, new)
            self._ema_weights = torch.where(present, averaged, old)
            weights = torch.where(present, self._ema_weights, 0.0)
            direction = self.clip_shared(combine(weights, jacobian))
        self._remember(weights, present)
        return (
            direction.to(device=jacobian.device, dtype=jacobian.dtype),
            weights.to(device=jacobian.device, dtype=jacobian.dtype),
        )

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``compute`` on the present tasks' rows only (``present``: Tensor[T] of bool, CPU);
        an absent task's weight is 0. Stateful methods override this to keep an absent task's
        state (docs/methods.md, "Masked tasks")."""
        if bool(present.all()):
            return self.compute(jacobian, losses, gramian)
        weights = torch.zeros(self.num_tasks, dtype=gramian.dtype)
        if not bool(present.any()):
            return torch.zeros_like(jacobian[0]), weights
        idx = present.nonzero().flatten()
        rows = jacobian[idx.to(jacobian.device)]
        # the present rows' own Gramian (not a slice of G: a product of T rows may round
        # differently in float32), so that the weights are those of the method built for them
        direction, sub = self.compute(rows, losses[idx.to(losses.device)], solver_gramian(rows))
        weights[idx] = sub.to("cpu", gramian.dtype)
        return direction, weights

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """``(direction, weights)`` from ``jacobian`` [T, n], ``losses`` [T] and ``gramian``
        (``solver_gramian(jacobian)``: float64 [T, T] on the CPU, finite, finite trace)."""
        raise NotImplementedError

    def pair_weights(self, cross: Tensor, present: Tensor) -> Tensor:
        """Two-batch methods: the weights [T] (float64, CPU) from ``A = J_1 J_2^T`` (float64
        [T, T], CPU, finite) and the present tasks (Tensor[T] of bool)."""
        raise NotImplementedError

    # ---- checkpointing (subclasses with state extend these) --------------------------------

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.ema > 0:
            state["ema_weights"] = self._ema_weights.clone()
        if self.update_every > 1 and self._cached is not None:
            state["cached_weights"] = self._cached.clone()
            state["cached_present"] = self._cached_present.clone()
            state["steps_since"] = self._steps_since
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        if "ema_weights" in state:
            self._ema_weights = state["ema_weights"].to("cpu", torch.float64).clone()
        if "cached_weights" in state:
            self._cached = state["cached_weights"].to("cpu", torch.float64).clone()
            self._cached_present = state["cached_present"].cpu().clone()
            self._steps_since = int(state["steps_since"])
