"""A test objective whose loss turns NaN half-way through a stage (for the NaN-skip test).

``poisoned_simpo`` is SimPO until ``at_progress`` crosses ``poison_from``; from then on its
params say ``poisoned=True`` and the loss is NaN. Imported with ``--import poisoned_objective``
(the test puts this folder on PYTHONPATH, which the Ray workers inherit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rlhf.objectives import get, register

SIMPO = get("simpo")


@dataclass(frozen=True)
class Params(SIMPO.params):  # type: ignore[misc, valid-type]
    poison_from: float = 0.5
    poisoned: bool = False


def loss(token_logps: torch.Tensor, batch, params: Params, counts):
    value, metrics = SIMPO.loss(token_logps, batch, params, counts)
    if params.poisoned:
        value = value * float("nan")
    return value, metrics


def at_progress(params: Params, progress: float) -> Params:
    return dataclasses.replace(params, poisoned=progress >= params.poison_from)


register(dataclasses.replace(SIMPO, name="poisoned_simpo", params=Params, loss=loss, at_progress=at_progress))
