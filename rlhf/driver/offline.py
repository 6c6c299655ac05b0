"""An offline stage: dataset -> RolloutBuffer -> learner steps, with held-out accuracy before/after."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tqdm import tqdm

from rlhf import data as rdata
from rlhf.batch import collate, global_counts, mismatched_completions, shard
from rlhf.buffer import RolloutBuffer
from rlhf.config import RunConfig, objective_params
from rlhf.driver.evaluate import preference_accuracy
from rlhf.metrics import MetricLogger
from rlhf.objectives import get

log = logging.getLogger("rlhf")


def data_spec(cfg: RunConfig) -> str:
    """``data.train`` with "default" spelled out as the configured built-in task."""
    return f"rg:{cfg.data.task}" if cfg.data.train == "default" else cfg.data.train


def load_offline_data(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Tokenized training examples of the objective's data kind and held-out pairs.

    Built-in data ("default", "rg:TASK") is generated as preference pairs; ``unpaired`` (KTO)
    rows are then made from the training pairs (chosen -> desirable, rejected -> undesirable),
    so the held-out pairs measure every objective the same way. A user file is read as the
    objective's kind; held-out pairs come from ``data.eval`` when given, else from a split of
    a pairs file.
    """
    kind = get(cfg.algo).data
    d, m = cfg.data, cfg.model
    lengths = {"max_length": m.max_length, "max_prompt_length": m.max_prompt_length, "policy": m.truncation}
    spec = data_spec(cfg)
    builtin = spec.startswith("rg:")
    rows = rdata.load_dataset_spec(spec, "pairs" if builtin else kind, seed=cfg.train.seed, n=d.size)
    eval_rows: list[dict] = []
    if d.eval:
        eval_rows = rdata.load_rows(d.eval)
    elif builtin or kind == "pairs":
        rows, eval_rows = rdata.train_eval_split(rows, d.eval_size, seed=cfg.train.seed)
    if builtin and kind == "unpaired":
        rows = rdata.pairs_to_unpaired(rows)
    source = d.train
    if kind == "pairs":
        train, stats = rdata.tokenize_pairs(rows, tokenizer, source=source, **lengths)
    elif kind == "unpaired":
        train, stats = rdata.tokenize_unpaired(rows, tokenizer, source=source, **lengths)
    else:
        raise ValueError(f"objective {cfg.algo!r} is online; load_offline_data is for offline stages")
    held_out, eval_stats = ([], {})
    if eval_rows:
        held_out, eval_stats = rdata.tokenize_pairs(eval_rows, tokenizer, source=d.eval or source, **lengths)
    info = {"train": stats, "eval": eval_stats}
    return train, held_out, info


def run_offline_stage(session: Any, cfg: RunConfig, data: tuple[list[dict], list[dict], dict[str, Any]],
                      tokenizer: Any, logger: MetricLogger, stage_name: str) -> dict[str, Any]:
    """Train ``cfg.train.max_steps`` optimizer steps of ``cfg.algo`` on ``data`` (``load_offline_data``)."""
    objective = get(cfg.algo)
    params = objective_params(cfg)
    train, held_out, info = data
    for split, stats in info.items():
        if stats:
            print(f"[{stage_name}] {split} data: {stats}")
    buffer = RolloutBuffer(objective.data)
    buffer.add(train, version=session.version)
    t = cfg.train
    if objective.needs_reference(params):
        session.start_reference()
    pad_id = tokenizer.pad_token_id
    ref_cache: dict = {}
    before = preference_accuracy(session, objective, params, held_out, pad_id, ref_cache=ref_cache)
    if before:
        print(f"[{stage_name}] held-out preference accuracy before: {before['eval/accuracy']:.3f} "
              f"({before['eval/pairs']} pairs)")
        logger.log(session.version, {f"{k}_before": v for k, v in before.items()}, stage_name)
    stream = buffer.epochs(t.global_batch, seed=t.seed)
    params_dict = dataclasses.asdict(params)
    bar = tqdm(range(t.max_steps), desc=f"{stage_name}", disable=not cfg.progress, dynamic_ncols=True)
    last: dict[str, Any] = {}
    for _ in bar:
        examples = next(stream)
        if objective.data == "unpaired":
            kl = mismatched_completions(examples)
            examples = [{**e, "kl_completion_ids": c} for e, c in zip(examples, kl)]
        counts = dataclasses.asdict(global_counts(objective.data, examples))
        per_rank = [[collate(objective.data, mb, pad_id) for mb in mbs]
                    for mbs in shard(examples, t.num_learners, t.grad_accum)]
        if objective.needs_reference(params):
            refs = session.reference_logps(per_rank)
            for mbs, ref_row in zip(per_rank, refs):
                for mb, ref in zip(mbs, ref_row):
                    mb["ref_token_logps"] = ref
        metrics = session.learners.call(
            "train_step", per_rank=[(mbs, cfg.algo, params_dict, counts) for mbs in per_rank])[0]
        session.version += 1
        last = metrics
        logger.log(session.version, metrics, stage_name)
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "rewards/accuracy", "accuracy")})
        if cfg.eval_every and session.version % cfg.eval_every == 0 and held_out:
            logger.log(session.version, preference_accuracy(session, objective, params, held_out, pad_id,
                                                            ref_cache=ref_cache), stage_name)
    bar.close()
    after = preference_accuracy(session, objective, params, held_out, pad_id, ref_cache=ref_cache)
    summary: dict[str, Any] = {"stage": stage_name, "algo": cfg.algo, "steps": t.max_steps, "last": last}
    if after:
        print(f"[{stage_name}] held-out preference accuracy after: {after['eval/accuracy']:.3f} "
              f"(before {before['eval/accuracy']:.3f})")
        logger.log(session.version, {f"{k}_after": v for k, v in after.items()}, stage_name)
        summary.update(accuracy_before=before["eval/accuracy"], accuracy_after=after["eval/accuracy"])
    return summary
