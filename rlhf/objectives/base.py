"""The contract every objective fulfils, and the registry that maps names to objectives.

An objective is data, not a class hierarchy: a frozen record of what it needs and a pure loss
function. The learner and the driver read the record and never branch on an objective's name.

Batch conventions (shared by every objective; see ``rlhf.batch``):

- ``input_ids``, ``attention_mask``, ``response_mask``: ``[R, T]`` (R rows, T positions, right
  padded). ``response_mask[r, t] = 1`` when token ``t`` of row ``r`` is a completion token
  (never position 0).
- Policy output ``"token_logps"``: ``[R, T]`` float, ``token_logps[r, t] = log p(x_t | x_<t)``
  for ``t >= 1``, and 0 at ``t = 0``. Multiply by ``response_mask`` before summing.
- Policy output ``"score"``: ``[R]`` float, a scalar head read at the last real token of each row.
- Optional reference log-probs arrive as ``batch["ref_token_logps"]`` ``[R, T]`` (same layout).
- Row layout is the data kind's: for ``pairs`` the first half of the rows are the chosen
  completions and the second half the rejected ones, pair ``i`` being rows ``i`` and ``i + P``;
  for ``unpaired`` (KTO) the first half are the real rows and the second half the mismatched
  prompt/completion rows used for the KL reference point; for ``prompts`` (online) one row per
  sampled completion.

Loss normalisation: ``loss`` receives the **global** counts of the optimizer step
(``GlobalCounts``: examples, non-empty examples and response tokens summed over every rank and
micro-batch) and returns this micro-batch's share of the global mean, so that summing the
returned losses over micro-batches and ranks gives the same value (and gradient) whatever the
split. Metrics are returned the same way: each value is this micro-batch's share of a global
mean, and the learner sums them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

Mode = Literal["offline", "online"]
DataKind = Literal["pairs", "unpaired", "completions", "prompts"]
PolicyOutput = Literal["token_logps", "score"]
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class GlobalCounts:
    """Totals over one whole optimizer step (all ranks, all micro-batches).

    ``examples``: pairs for ``pairs`` data, real rows for ``unpaired``, samples for ``prompts``.
    ``tokens``: response tokens of the rows the loss is taken over (for pairs: chosen and
    rejected together; for unpaired: the real rows only).
    ``nonempty``: examples with at least one response token (for pairs: both completions
    non-empty), the denominator of the ``seq-mean-token-*`` reductions; None means "same as
    ``examples``". Read it through ``nonempty_examples``.

    The learner builds it as ``GlobalCounts(**counts)`` from a dict with keys ``examples``,
    ``tokens`` and optionally ``nonempty`` (``dataclasses.asdict`` of ``rlhf.batch.global_counts``).
    """

    examples: int
    tokens: int
    nonempty: int | None = None

    def __post_init__(self) -> None:
        if self.nonempty is not None and not 0 <= self.nonempty <= self.examples:
            raise ValueError(
                f"GlobalCounts: nonempty ({self.nonempty}) must be between 0 and examples ({self.examples})"
            )

    @property
    def nonempty_examples(self) -> int:
        """Examples with at least one response token (``examples`` when ``nonempty`` is None)."""
        return self.examples if self.nonempty is None else self.nonempty


LossFn = Callable[[torch.Tensor, Batch, Any, GlobalCounts], tuple[torch.Tensor, dict[str, torch.Tensor]]]
RewardFn = Callable[[torch.Tensor, Batch, Any], torch.Tensor]
PrepareFn = Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]]
ProgressFn = Callable[[Any, float], Any]


@dataclass(frozen=True)
class StepStatistic:
    """A detached mean the loss needs over the whole optimizer step (every micro-batch on every
    rank), not over one micro-batch: e.g. KTO's KL reference point.

    For each micro-batch the learner takes ``split(batch) -> (stat_rows, loss_rows)``, runs a
    no-grad forward of ``stat_rows`` and adds up ``partial(output, stat_rows, params) -> (sum,
    count)`` (0-dim tensors); after an all-reduce over the ranks it trains on ``loss_rows`` with
    ``loss_rows[field] = sum / count`` (a 0-dim float32 tensor; 0 when ``count`` is 0). So the
    value is the same whatever the split over ranks and micro-batches. A loss given a batch
    without ``field`` estimates it from that micro-batch alone (the pure-function path, tests,
    and a step of one micro-batch on one rank, where that is the whole step).
    """

    field: str
    split: Callable[[Batch], tuple[Batch, Batch]]
    partial: Callable[[torch.Tensor, Batch, Any], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Objective:
    """What an objective needs and how it computes its loss.

    Attributes:
        name: registry key, used on the command line (``--algo NAME``).
        mode: ``offline`` (dataset -> buffer) or ``online`` (generate -> reward -> buffer).
        data: the data kind it trains on (``pairs``, ``unpaired`` or ``prompts``).
        params: a frozen dataclass type holding the hyper-parameters, all with defaults.
        fields: batch fields the loss reads (checked before each step).
        output: the policy output the loss takes (``token_logps`` or ``score``).
        needs_reference: ``params -> bool``; a reference model is started only when true.
        loss: ``(policy_output, batch, params, counts) -> (loss, metrics)``, see module doc.
        implicit_reward: ``(policy_output, batch, params) -> [R]`` per-row reward used for
            held-out preference accuracy (chosen row beats rejected row); may read
            ``ref_token_logps``.
        prepare: optional ``(global_batch, params) -> global_batch`` run once per rollout batch
            before micro-batching (advantages for the online family).
        prepare_reads: optional ``params -> fields``: the policy log-prob fields ``prepare``
            reads (e.g. ``old_logps`` for a KL folded into the reward). When it reads none, a
            rollout that feeds a single optimizer step takes ``old_logps`` from that step's own
            forward instead of a separate one.
        at_progress: optional ``(params, progress) -> params``: the params of the step at
            fraction ``progress`` in ``[0, 1]`` of the stage (a hyper-parameter schedule), given
            the stage's params; call it through ``params_at``.
        step_statistic: optional ``StepStatistic``: a detached mean over the whole step that
            the learner computes first and hands to every micro-batch's loss.
        paper: citation shown in ``--help`` listings.
    """

    name: str
    mode: Mode
    data: DataKind
    params: type
    fields: tuple[str, ...]
    output: PolicyOutput
    needs_reference: Callable[[Any], bool]
    loss: LossFn
    implicit_reward: RewardFn | None = None
    prepare: PrepareFn | None = None
    prepare_reads: Callable[[Any], tuple[str, ...]] | None = None
    at_progress: ProgressFn | None = None
    step_statistic: StepStatistic | None = None
    paper: str = ""

    def make_params(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """Build this objective's params from ``overrides``; unknown keys fail with the valid names."""
        overrides = dict(overrides or {})
        valid = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"unknown {self.name} parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return self.params(**overrides)

    def params_at(self, params: Any, progress: float) -> Any:
        """The params of the step at fraction ``progress`` of the stage (0: first step, 1: last).

        ``at_progress(params, progress)`` when the objective has a schedule, else ``params``
        unchanged. Pass the stage's params every time, not a previous step's.
        """
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"{self.name}: progress must be in [0, 1] (got {progress})")
        return params if self.at_progress is None else self.at_progress(params, progress)

    def check_batch(self, batch: Batch, params: Any) -> None:
        """Raise a one-line error when a field the loss reads is missing from ``batch``."""
        needed = list(self.fields)
        if self.needs_reference(params):
            needed.append("ref_token_logps")
        missing = [f for f in needed if f not in batch]
        if missing:
            raise KeyError(
                f"objective {self.name!r} needs batch field(s) {', '.join(missing)}; "
                f"batch has {', '.join(sorted(batch))}"
            )


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add ``objective`` to the registry; a second objective with the same name is refused."""
    if objective.name in _REGISTRY:
        raise ValueError(f"objective {objective.name!r} is already registered")
    _REGISTRY[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    """The objective called ``name``; an unknown name fails listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(_REGISTRY)
