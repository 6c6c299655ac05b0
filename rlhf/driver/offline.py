"""An offline stage: dataset -> RolloutBuffer -> learner steps, with held-out accuracy before/after."""

from __future__ import annotations

import logging
from typing import Any

from rlhf import data as rdata
from rlhf.batch import global_counts, mismatched_completions
from rlhf.buffer import RolloutBuffer
from rlhf.config import RunConfig, objective_params
from rlhf.driver.durable import StageRun
from rlhf.driver.evaluate import preference_accuracy
from rlhf.driver.progress import PhaseTimer, headline
from rlhf.objectives import get

log = logging.getLogger("rlhf")


def data_spec(cfg: RunConfig) -> str:
    """``data.train`` with "default" spelled out as the configured built-in task."""
    return f"rg:{cfg.data.task}" if cfg.data.train == "default" else cfg.data.train


def load_offline_data(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Tokenized training examples of the objective's data kind and held-out pairs.

    Built-in data ("default", "rg:TASK") is generated as preference pairs; ``unpaired`` (KTO)
    rows are then made from the training pairs (chosen -> desirable, rejected -> undesirable),
    and ``completions`` (SFT) train on the chosen answers, so the held-out pairs measure every
    objective the same way. A user file is read as the objective's kind (SFT also reads a pairs
    file, as its chosen answers); held-out pairs come from ``data.eval`` when given, else from a
    split of a pairs file.
    """
    kind = get(cfg.algo).data
    d, m = cfg.data, cfg.model
    lengths = {"max_length": m.max_length, "max_prompt_length": m.max_prompt_length, "policy": m.truncation}
    spec = data_spec(cfg)
    builtin = spec.startswith("rg:")
    rows = rdata.load_dataset_spec(spec, "pairs" if builtin else kind, seed=cfg.train.seed, n=d.size, split=d.split,
                                   subset=d.subset, columns=d.columns)
    eval_rows: list[dict] = []
    if d.eval:
        eval_rows = rdata.load_rows(d.eval, columns=d.columns)
    elif builtin or kind == "pairs" or (kind == "completions" and all("rejected" in r for r in rows)):
        rows, eval_rows = rdata.train_eval_split(rows, d.eval_size, seed=cfg.train.seed)
    if builtin and kind == "unpaired":
        rows = rdata.pairs_to_unpaired(rows)
    source = d.train
    if kind == "pairs":
        train, stats = rdata.tokenize_pairs(rows, tokenizer, source=source, **lengths)
    elif kind == "unpaired":
        train, stats = rdata.tokenize_unpaired(rows, tokenizer, source=source, **lengths)
    elif kind == "completions":
        train, stats = rdata.tokenize_completions(rows, tokenizer, source=source, **lengths)
    else:
        raise ValueError(f"objective {cfg.algo!r} is online; load_offline_data is for offline stages")
    held_out, eval_stats = ([], {})
    if eval_rows:
        held_out, eval_stats = rdata.tokenize_pairs(eval_rows, tokenizer, source=d.eval or source, **lengths)
    info = {"train": stats, "eval": eval_stats}
    return train, held_out, info


def run_offline_stage(session: Any, cfg: RunConfig, data: tuple[list[dict], list[dict], dict[str, Any]],
                      tokenizer: Any, stage: StageRun) -> dict[str, Any]:
    """Train ``cfg.train.max_steps`` optimizer steps of ``cfg.algo`` on ``data`` (``load_offline_data``).

    The batch order is a seeded stream (``RolloutBuffer.epochs``); a resumed stage replays the
    stream up to its checkpoint's step, so it continues with exactly the batches it would have had.
    """
    from actors.learner_group import TrainStep

    objective = get(cfg.algo)
    params = objective_params(cfg)
    train, held_out, info = data
    for split, stats in info.items():
        if stats:
            print(f"[{stage.name}] {split} data: {stats}")
    buffer = RolloutBuffer(objective.data)
    buffer.add(train, version=session.version)
    t = cfg.train
    if objective.needs_reference(params):
        session.start_reference()
    pad_id = tokenizer.pad_token_id
    ref_cache: dict = {}
    logger = stage.logger
    done = stage.start()
    before = {} if done else preference_accuracy(session, objective, params, held_out, pad_id, ref_cache=ref_cache)
    if before:
        print(f"[{stage.name}] held-out preference accuracy before: {before['eval/accuracy']:.3f} "
              f"({before['eval/pairs']} pairs)")
        logger.log(session.steps, {f"{k}_before": v for k, v in before.items()}, stage.name)
    stream = buffer.epochs(t.global_batch, seed=t.seed)
    for _ in range(done):  # the batches the checkpointed steps already trained on
        next(stream)
    bar = stage.progress.bar(stage.name, t.max_steps, initial=done)
    last: dict[str, Any] = {}
    for step in range(done, t.max_steps):
        timer = PhaseTimer()
        with timer.phase("data"):
            examples = next(stream)
            if objective.data == "unpaired":
                kl = mismatched_completions(examples)
                examples = [{**e, "kl_completion_ids": c} for e, c in zip(examples, kl)]
            counts = global_counts(objective.data, examples)
            per_rank = session.learners.shard_examples(objective.data, examples, pad_id)
        step_params = objective.params_at(params, step / max(t.max_steps - 1, 1))
        if objective.needs_reference(step_params):
            with timer.phase("ref_logps"):
                refs = session.reference_logps(per_rank)
                for mbs, ref_row in zip(per_rank, refs):
                    for mb, ref in zip(mbs, ref_row):
                        mb["ref_token_logps"] = ref
        with timer.phase("train"):
            metrics = session.learners.train_step(TrainStep(objective, step_params, counts, per_rank))
        if not metrics.get("skipped"):
            session.version += 1
            last = metrics
            metrics.update(length_ratios(metrics))
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and held_out:
            with timer.phase("eval"):
                metrics.update(preference_accuracy(session, objective, params, held_out, pad_id, ref_cache=ref_cache))
        phases = timer.finish()
        metrics.update(phases)
        text = stage.progress.advance(bar, phases["time/step"], headline(metrics, HEADLINE), phases)
        stage.step_done(session, metrics, {"batches": step + 1, "seed": t.seed})
        if not cfg.progress:
            print(f"[{stage.name}] step {step + 1}/{t.max_steps}: {text}", flush=True)
    bar.close()
    stage.save(session, {"batches": t.max_steps, "seed": t.seed})
    after = preference_accuracy(session, objective, params, held_out, pad_id, ref_cache=ref_cache)
    summary: dict[str, Any] = {"stage": stage.name, "algo": cfg.algo, "steps": t.max_steps, "last": last}
    if after:
        start = before or _logged_before(stage)
        note = f" (before {start['eval/accuracy']:.3f})" if start else ""
        print(f"[{stage.name}] held-out preference accuracy after: {after['eval/accuracy']:.3f}{note}")
        logger.log(session.steps, {f"{k}_after": v for k, v in after.items()}, stage.name)
        summary["accuracy_after"] = after["eval/accuracy"]
        if start:
            summary["accuracy_before"] = start["eval/accuracy"]
    return summary


HEADLINE = ("loss", "rewards/accuracy")


def length_ratios(metrics: dict[str, Any]) -> dict[str, float]:
    """Chosen and rejected lengths over the prompt length (the SimPO guides tune the margin by them)."""
    prompt = metrics.get("length/prompt")
    if not prompt:
        return {}
    return {f"length/{side}_over_prompt": metrics[f"length/{side}"] / prompt
            for side in ("chosen", "rejected") if f"length/{side}" in metrics}


def _logged_before(stage: StageRun) -> dict[str, float]:
    """The "before" accuracy a resumed stage logged in its first life (read back from metrics.jsonl)."""
    import json

    path = stage.out_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("stage") == stage.name and "eval/accuracy_before" in record:
            return {"eval/accuracy": record["eval/accuracy_before"]}
    return {}
