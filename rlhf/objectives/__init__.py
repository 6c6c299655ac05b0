"""Objectives: one small file per loss, registered by name.

| name           | mode    | data     | reference        | file              |
|----------------|---------|----------|------------------|-------------------|
| sft            | offline | completions | never         | sft.py            |
| simpo          | offline | pairs    | never            | simpo.py          |
| dpo            | offline | pairs    | always           | dpo.py            |
| kto            | offline | unpaired | always           | kto.py            |
| rm             | offline | pairs    | never            | rm.py             |
| grpo           | online  | prompts  | when kl_coef > 0 | grpo.py           |
| rloo           | online  | prompts  | when kl_coef > 0 | rloo.py           |
| reinforce_pp   | online  | prompts  | when kl_coef > 0 | reinforce_pp.py   |
| reinforce_pp_baseline | online | prompts | when kl_coef > 0 | reinforce_pp.py |

To add one: write ``myloss.py`` with a frozen params dataclass, a pure loss function
``(policy_output, batch, params, counts) -> (loss, metrics)`` and a
``register(Objective(...))`` call (see ``base.py`` for the contract), then import the module
below. Nothing in the learner or driver changes. ``examples/custom_objective.py`` shows one
registered from outside the package.
"""

from rlhf.objectives.base import GlobalCounts, Objective, get, names, register

__all__ = ["GlobalCounts", "Objective", "get", "names", "register"]

# Registration happens on import; keep this list in the table's order.
from rlhf.objectives import dpo, grpo, kto, reinforce_pp, rloo, rm, sft, simpo  # noqa: E402,F401
