"""LearnerGroup: the driver's typed view of the learner ranks.

The driver reads like local code: ``learners.train_step(TrainStep(...))``,
``learners.compute(batch)``, ``learners.save(path)``. This facade owns the one thing every caller
used to redo: splitting rows over ``ranks x grad_accum`` micro-batches (``shard_examples`` for
offline examples, ``shard_rows`` for an online rollout batch) and assembling per-rank outputs back
into one tensor. It hands the learners the ``Objective`` record itself, never its name, so an
objective registered by ``--import`` in the driver exists in the learner processes too (its
functions pickle by reference and import their module there).

Every call is a collective: all ranks run it together (ZeRO-3 gathers, gradient all-reduce).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from actors.group import ActorGroup, start_learners
from rlhf.batch import collate, shard, slice_rows
from rlhf.objectives.base import GlobalCounts, Objective

MODEL_INPUTS = ("input_ids", "attention_mask", "response_mask")


@dataclass
class TrainStep:
    """One optimizer step: the objective record, its params, the step's global counts and, per rank,
    its ``grad_accum`` collated micro-batches. ``on_policy``: the rollout feeds only this step (see
    ``LearnerActor.train_step``)."""

    objective: Objective
    params: Any
    counts: GlobalCounts
    per_rank: list[list[dict[str, torch.Tensor]]]
    on_policy: bool = False
    is_cap: float | None = None  # a stale rollout: truncated importance weights with this cap


def shipped_fields(objective: Objective, params: Any, on_policy: bool = False, stale: bool = False) -> tuple[str, ...]:
    """Batch fields a learner needs for ``objective``: model inputs, the loss's declared fields, the
    reference log-probs when it uses them, the generator's log-probs for the on-policy gap and
    the importance weights of a stale rollout."""
    fields = [*MODEL_INPUTS, *objective.fields]
    if objective.needs_reference(params):
        fields.append("ref_token_logps")
    if on_policy:
        fields = [f for f in fields if f != "old_logps"] + ["behaviour_logps"]
    elif stale:
        fields.append("is_weights")
    return tuple(dict.fromkeys(fields))


class LearnerGroup:
    """``len(group)`` learner ranks, each taking ``grad_accum`` micro-batches per optimizer step."""

    def __init__(self, group: ActorGroup, grad_accum: int) -> None:
        self.group = group
        self.ranks = len(group)
        self.grad_accum = int(grad_accum)
        self.loaded_from: list[str] = []  # the folder each rank read at the last load_checkpoint

    @classmethod
    def start(cls, n: int, config: dict[str, Any], timeout_s: float, num_cpus: float,
              strategy: str = "PACK", num_gpus: float | None = None,
              resources: dict[str, float] | None = None,
              placement_timeout_s: float | None = None) -> LearnerGroup:
        """Start ``n`` ranks (``actors.group.start_learners``: resources per rank, placement strategy) and wrap them."""
        group = start_learners(n, config, timeout_s=timeout_s, num_cpus=num_cpus, strategy=strategy,
                               num_gpus=num_gpus, resources=resources, placement_timeout_s=placement_timeout_s)
        return cls(group, int(config.get("grad_accum", 1)))

    def __len__(self) -> int:
        return self.ranks

    @property
    def actors(self) -> list[Any]:
        """Actor handles in rank order (for the weight-sync transports)."""
        return self.group.actors

    @property
    def info(self) -> list[Any]:
        """Each rank's ``setup`` result."""
        return self.group.info

    # -- sharding -------------------------------------------------------------------------------
    def shard_examples(self, kind: str, examples: Sequence[dict], pad_id: int) -> list[list[dict[str, torch.Tensor]]]:
        """Offline examples -> ``out[rank][micro]`` collated batches (``rlhf.batch.shard``)."""
        return [[collate(kind, mb, pad_id) for mb in mbs] for mbs in shard(examples, self.ranks, self.grad_accum)]

    def shard_rows(self, batch: dict[str, torch.Tensor], rows: torch.Tensor,
                   fields: Sequence[str] | None = None) -> list[list[dict[str, torch.Tensor]]]:
        """Rows ``rows`` of a ``[R, ...]`` batch -> ``out[rank][micro]`` contiguous slices, keeping ``fields``.

        Contiguous chunks keep rows that share a prompt together, so packing can share it.
        """
        keep = {k: v for k, v in batch.items() if fields is None or k in fields}
        micro = rows.chunk(self.ranks * self.grad_accum)
        if len(micro) != self.ranks * self.grad_accum:
            raise ValueError(
                f"{len(rows)} rows do not split into {self.ranks} rank(s) x {self.grad_accum} micro-batches")
        return [[slice_rows(keep, micro[r * self.grad_accum + a]) for a in range(self.grad_accum)]
                for r in range(self.ranks)]

    # -- training and inference -----------------------------------------------------------------
    def train_step(self, step: TrainStep) -> dict[str, Any]:
        """Run one optimizer step on every rank; the metrics (global means, see the learner)."""
        args = [(mbs, step.objective, step.params, step.counts, step.on_policy, step.is_cap) for mbs in step.per_rank]
        return self.group.call("train_step", per_rank=args)[0]

    def compute(self, batch: dict[str, torch.Tensor], output: str = "token_logps",
                method: str = "compute") -> torch.Tensor:
        """``output`` of the current policy (or the co-located reference, ``method="compute_reference"``)
        for every row of ``batch``: ``[R, T]`` token log-probs or ``[R]`` scores, CPU float32.

        Rows are split over the ranks (each computes its own share; under ZeRO-3 they gather
        together); with fewer rows than ranks, every rank computes them all and rank 0's answer is
        used.
        """
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        rows = inputs["input_ids"].shape[0]
        if rows < self.ranks:
            return self.group.call(method, inputs, output)[0]
        bounds = [(r * rows // self.ranks, (r + 1) * rows // self.ranks) for r in range(self.ranks)]
        outs = self.group.call(method, per_rank=[(slice_rows(inputs, slice(a, b)), output) for a, b in bounds])
        if output != "token_logps":
            return torch.cat(outs)
        full = torch.zeros(inputs["input_ids"].shape, dtype=torch.float32)
        for (a, b), out in zip(bounds, outs):
            full[a:b, : out.shape[1]] = out
        return full

    def start_stage(self, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float,
                    reset_optimizer: bool = False) -> None:
        self.group.call("start_stage", lr, warmup_steps, total_steps, min_lr_ratio, reset_optimizer)

    # -- state ----------------------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Write the merged model as a transformers folder at ``path`` (rank 0 writes; all take part).

        Where the learners ship files (``actors.files``), rank 0 returns the folder's files and
        they are written here, at ``path`` on the driver.
        """
        _write_shipped(path, self.group.call("save", path))
        return path

    def save_checkpoint(self, folder: str, tag: str) -> None:
        """Every rank's share of the run state into ``folder`` (each rank's own files, written
        here on the driver where the learners ship files)."""
        _write_shipped(folder, self.group.call("save_checkpoint", folder, tag))

    def load_checkpoint(self, folder: str, tag: str) -> int:
        """Every rank restores its share of the checkpoint in the driver's ``folder``; returns the
        optimizer steps rank 0 had taken. Where the learners ship files, what they read of it
        (``actors.files.pack_checkpoint``) is put into Ray's object store once and each rank on
        another node loads a local copy (``loaded_from`` says which folder each rank read)."""
        shipped = None
        if any(info.get("ships") for info in self.info):  # each rank's setup says whether it ships
            import ray

            from actors.files import pack_checkpoint

            shipped = [ray.put(pack_checkpoint(folder, tag))]
        results = self.group.call("load_checkpoint", folder, tag, shipped)
        self.loaded_from = [where for _, where in results]
        return results[0][0]

    def offload_states(self) -> float:
        """Every rank moves its optimizer-only state to host memory until its next step (the
        learner shares its GPU with a vLLM engine that is about to generate); the slowest rank's seconds."""
        return max(self.group.call("offload_states"))

    def shutdown(self) -> None:
        self.group.shutdown()


def _write_shipped(folder: str, results: list[Any]) -> None:
    """Write the ``{relative_path: bytes}`` results of shipping ranks under ``folder`` (a rank that
    wrote ``folder`` itself returns its path, and nothing is left to do)."""
    from actors.files import merge_files, write_files

    if any(isinstance(r, dict) for r in results):
        write_files(folder, merge_files(results))
