"""Schedules: a run is a list of stages, each an objective with its own data, length and settings.

``--algo X`` is a one-stage schedule. A YAML ``stages:`` list (or ``--schedule simpo:200,grpo:50``)
chains stages on the same live actors: the driver keeps the learners (and their weights) between
stages, starts generators or a reference actor only when a stage needs them, optionally resets
the optimizer, and syncs weights before the first online step.

A stage entry is ``{algo, steps, reset_optimizer?, <any RunConfig section>: {...}}``; its
sections are merged over the run's own, e.g.::

    stages:
      - {algo: simpo, steps: 40, objective: {beta: 2.0}}
      - {algo: grpo, steps: 20, train: {lr: 1.0e-6}}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rlhf.config import ConfigError, RunConfig, from_dict, merge, to_dict, validate


@dataclass(frozen=True)
class Stage:
    """One stage: its full, validated config (``cfg.algo``, ``cfg.train.max_steps`` = its length)."""

    index: int
    cfg: RunConfig
    reset_optimizer: bool = False

    @property
    def name(self) -> str:
        return f"{self.index}:{self.cfg.algo}"

    @property
    def online(self) -> bool:
        """Whether this stage generates (it needs the vLLM generators)."""
        from rlhf.objectives import get

        return get(self.cfg.algo).mode == "online"

    @property
    def needs_reference(self) -> bool:
        """Whether this stage's objective, with its params, reads a reference model."""
        from rlhf.config import objective_params
        from rlhf.objectives import get

        return get(self.cfg.algo).needs_reference(objective_params(self.cfg))


def parse_schedule(text: str) -> list[dict[str, Any]]:
    """``"simpo:200,grpo:50"`` -> ``[{"algo": "simpo", "steps": 200}, {"algo": "grpo", "steps": 50}]``."""
    stages = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if not name or not steps.isdigit():
            raise ConfigError(f"schedule entry {part!r} is not of the form algo:steps")
        stages.append({"algo": name, "steps": int(steps)})
    return stages


def generates_ahead(stages: list[Stage]) -> bool:
    """Whether any stage lets generation run ahead of training (``train.max_staleness > 0``)."""
    return any(s.cfg.train.max_staleness > 0 for s in stages)


def build_schedule(cfg: RunConfig) -> list[Stage]:
    """The stages of ``cfg`` (one stage when ``cfg.stages`` is empty)."""
    if not cfg.stages:
        return [Stage(0, cfg)]
    base = to_dict(replace(cfg, stages=()))
    base.pop("objective")  # params belong to one objective: never inherited across stages
    out = []
    for i, entry in enumerate(cfg.stages):
        entry = dict(entry)
        steps = entry.pop("steps", None)
        reset = bool(entry.pop("reset_optimizer", False))
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"stages[{i}]: 'steps' must be a positive integer")
        data = merge(base, entry)
        data["train"] = {**data.get("train", {}), "max_steps": steps}
        data["stages"] = ()
        try:
            stage_cfg = from_dict(RunConfig, data, f"stages[{i}]")
            validate(stage_cfg)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"stages[{i}] ({entry.get('algo')}): {err}") from None
        out.append(Stage(i, stage_cfg, reset))
    return out
