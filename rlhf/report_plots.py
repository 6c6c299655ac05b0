"""The plots of ``rlhf.report``: each a function of the ``metrics.jsonl`` records returning a figure, or None.

A plot is made only when its data exists, so every key may be absent. Step plots mark stage
boundaries (a schedule's stages) with a vertical line and the stage's name. Matplotlib is used
through ``Figure`` objects (the Agg renderer, no pyplot state), so it runs headless.

Adding a plot: write ``fn(records, boundaries) -> Figure | None`` and add a line to ``PLOTS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure

Records = list[dict[str, Any]]
Boundaries = list[tuple[float, str]]  # (where a stage starts, its name), only for several stages

PHASES = ("data", "generate", "reward", "old_logps", "ref_logps", "train", "eval", "sync", "other")
HELD_OUT = ("eval/accuracy_before", "eval/accuracy", "eval/accuracy_after")  # one curve: the same measure


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(records: Records, keys: tuple[str, ...]) -> tuple[list[int], list[float]]:
    """(steps, values) of every record holding one of ``keys``, in step order."""
    points = sorted(((r["step"], float(r[k])) for r in records for k in keys if _number(r.get(k))),
                    key=lambda p: p[0])  # stable: records of one step keep their order
    return [s for s, _ in points], [v for _, v in points]


def stage_boundaries(records: Records) -> Boundaries:
    """Where each stage starts, when the records hold more than one stage.

    The first stage at its first step; a later one half a step after the previous stage's last
    step (its first update comes after the line; an offline stage's "before" eval, logged at the
    step it starts from, falls on the line's left with the previous stage's "after").
    """
    starts: list[tuple[float, str]] = []
    last = 0
    for r in records:
        name = str(r.get("stage", ""))
        if not starts:
            starts.append((r["step"], name))
        elif starts[-1][1] != name:
            starts.append((last + 0.5, name))
        last = r["step"]
    return starts if len(starts) > 1 else []


def _figure(panels: int) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(8, 2.2 + 1.8 * panels), layout="constrained")
    return fig, list(fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])


def _mark_stages(ax: Any, boundaries: Boundaries) -> None:
    for step, name in boundaries:
        ax.axvline(step, color="0.4", linestyle="--", linewidth=1)
        ax.text(step, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=8)


def _lines(records: Records, curves: list[tuple[str, tuple[str, ...]]], boundaries: Boundaries,
           ylabel: str, panels: bool = False) -> Figure | None:
    """One curve per (label, keys) with data; on one axes, or one panel each (different scales)."""
    found = [(label, *series(records, keys)) for label, keys in curves]
    found = [c for c in found if c[1]]
    if not found:
        return None
    fig, axes = _figure(len(found) if panels else 1)
    for i, (label, steps, values) in enumerate(found):
        ax = axes[i if panels else 0]
        ax.plot(steps, values, label=label, marker="o" if len(steps) <= 30 else None, markersize=3)
        ax.set_ylabel(label if panels else ylabel)
    for ax in axes:
        _mark_stages(ax, boundaries)
        ax.grid(alpha=0.3)
        if not panels:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    return fig


def loss(records: Records, boundaries: Boundaries) -> Figure | None:
    return _lines(records, [("loss", ("loss",)), ("pg_loss", ("pg_loss",))], boundaries, "loss")


def accuracy_reward(records: Records, boundaries: Boundaries) -> Figure | None:
    curves = [("held-out accuracy", HELD_OUT), ("eval mean reward", ("eval/mean_reward",)),
              ("eval pass@1", ("eval/pass@1",)), ("eval pass@k", ("eval/pass@k",)),
              ("rollout mean reward", ("reward/mean",)), ("train-batch accuracy", ("rewards/accuracy",))]
    return _lines(records, curves, boundaries, "accuracy / reward")


def reward_distribution(records: Records, boundaries: Boundaries) -> Figure | None:
    """Per-sample ``reward/hist`` (first vs second half of its steps) when logged, else per-step means."""
    panels: list[tuple[str, list[tuple[str, list[float]]]]] = []
    hist = [r for r in records if isinstance(r.get("reward/hist"), list)]
    if hist:
        half = len(hist) // 2 or 1
        groups = [("first half of steps", hist[:half]), ("second half of steps", hist[half:])]
        panels.append(("per-sample reward", [(label, [float(v) for r in group for v in r["reward/hist"]
                                                      if _number(v)]) for label, group in groups]))
    elif series(records, ("reward/mean",))[0]:
        panels.append(("per-step mean reward", [("rollout steps", series(records, ("reward/mean",))[1])]))
    implicit = [(k.split("/")[1], series(records, (k,))[1]) for k in ("rewards/chosen", "rewards/rejected")]
    if any(values for _, values in implicit):
        panels.append(("per-step mean implicit reward", implicit))
    panels = [(xlabel, [(label, v) for label, v in hists if v]) for xlabel, hists in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = Figure(figsize=(8, 2.2 + 1.8 * len(panels)), layout="constrained")
    for ax, (xlabel, hists) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        every = [v for _, values in hists for v in values]
        bins = np.histogram_bin_edges(every, bins=min(30, max(5, len(every) // 3)))  # shared by the overlays
        for label, values in hists:
            ax.hist(values, bins=bins, alpha=0.6, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    return fig


def kl_gap(records: Records, boundaries: Boundaries) -> Figure | None:
    curves = [("kl", ("kl",)), ("log-prob gap mean", ("logprob_gap/mean",)),
              ("log-prob gap max", ("logprob_gap/max",))]
    return _lines(records, curves, boundaries, "", panels=True)


def lengths(records: Records, boundaries: Boundaries) -> Figure | None:
    curves = [("response", ("response/length",)), ("chosen", ("length/chosen",)),
              ("rejected", ("length/rejected",)), ("prompt", ("length/prompt",))]
    return _lines(records, curves, boundaries, "tokens")


def learning_rate(records: Records, boundaries: Boundaries) -> Figure | None:
    return _lines(records, [("lr", ("lr",)), ("grad_norm", ("grad_norm",))], boundaries, "", panels=True)


def phase_times(records: Records, boundaries: Boundaries) -> Figure | None:
    """Seconds per step in each ``time/<phase>``, stacked (bars; an area past 200 steps)."""
    per_step: dict[int, dict[str, float]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("time/") and _number(value):
                phases = per_step.setdefault(r["step"], {})
                phases[key[5:]] = phases.get(key[5:], 0.0) + float(value)
    if not per_step:
        return None
    seen = {p for phases in per_step.values() for p in phases}
    names = [p for p in PHASES if p in seen] + sorted(seen - set(PHASES))
    steps = sorted(per_step)
    stacks = [[per_step[s].get(p, 0.0) for s in steps] for p in names]
    fig, (ax,) = _figure(1)
    if len(steps) > 200:
        ax.stackplot(steps, stacks, labels=names)
    else:
        width = 0.8 * min((b - a for a, b in zip(steps, steps[1:])), default=1)
        bottom = [0.0] * len(steps)
        for name, values in zip(names, stacks):
            ax.bar(steps, values, width=width, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
    _mark_stages(ax, boundaries)
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


PlotFn = Callable[[Records, Boundaries], "Figure | None"]
PLOTS: list[tuple[str, str, str, PlotFn]] = [  # (file stem, section title, caption, function)
    ("loss", "Loss", "Training loss per optimizer step (`loss`, `pg_loss`).", loss),
    ("accuracy_reward", "Held-out accuracy and mean reward",
     "Held-out preference accuracy (`eval/accuracy`, with the before/after points), eval reward and pass@k "
     "(`eval/*`), rollout mean reward (`reward/mean`) and train-batch accuracy (`rewards/accuracy`).",
     accuracy_reward),
    ("reward_distribution", "Reward distribution",
     "Per-sample rewards (`reward/hist`, first vs second half of the steps) when a run logs them; otherwise "
     "the distribution of per-step mean rewards (`reward/mean`); offline, per-step mean implicit rewards of "
     "chosen and rejected (`rewards/chosen`, `rewards/rejected`).", reward_distribution),
    ("kl", "KL and log-prob gap",
     "KL to the reference (`kl`) and the gap between the generator's and the learner's log-probs of the "
     "sampled tokens (`logprob_gap/mean`, `logprob_gap/max`).", kl_gap),
    ("length", "Lengths", "Mean tokens per response, chosen, rejected and prompt (`response/length`, "
     "`length/*`).", lengths),
    ("lr", "Learning rate and gradient norm", "`lr` and `grad_norm` (before clipping).", learning_rate),
    ("time", "Time per step", "Seconds per step in each phase (`time/<phase>`), stacked.", phase_times),
]
