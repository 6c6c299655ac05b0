"""An online stage: prompts -> vLLM samples -> rewards -> advantages -> learner steps -> weight sync.

One rollout step:

1. sync the learner's weights into the generators if they changed (before every generation);
2. take ``prompts_per_step`` prompts, sample ``n`` completions each (the GRPO/RLOO group);
3. score them with the reward functions (and the reward model actor, if configured);
4. ``old_logps``, the sampled tokens' log-probs under the learner's current weights: when the
   rollout feeds exactly one optimizer step (``epochs = mini_batches = 1``) and ``prepare`` does
   not read them, they come from that step's own training forward (detached; the ratio is then
   exactly 1); otherwise a separate no-grad forward computes them first. Either way the gap to
   vLLM's own log-probs is logged (a sync that silently did nothing shows up there);
5. reference log-probs when a KL term is on; ``objective.prepare`` computes advantages over the
   whole rollout batch;
6. ``epochs`` x ``mini_batches`` optimizer steps, each split over ranks x micro-batches with the
   mini-batch's global counts.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from rlhf import data as rdata
from rlhf.batch import collate_samples
from rlhf.buffer import RolloutBuffer
from rlhf.checkpoint import decode_random_state, encode_random_state
from rlhf.config import RunConfig, objective_params
from rlhf.driver.durable import StageRun
from rlhf.driver.offline import data_spec
from rlhf.driver.progress import PhaseTimer, headline
from rlhf.objectives import get
from rlhf.objectives._online import truncated_is_weights
from rlhf.objectives.base import GlobalCounts


def logprob_gap(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and max absolute difference of two ``[R, T]`` log-prob tensors over ``mask``."""
    diff = (a - b).abs()[mask.bool()]
    if diff.numel() == 0:
        return 0.0, 0.0
    return float(diff.mean()), float(diff.max())


def make_scorer(cfg: RunConfig, session: Any) -> tuple[Any, list[Any]]:
    """``(scorer, rewards)``: ``scorer(completions, rows) -> (rewards, stats)`` over the configured reward
    functions and model (each sample under ``reward.timeout_s``), and the loaded reward list itself."""
    from rlhf.rewards.registry import load_rewards, score_samples

    spec: list[Any] = list(cfg.reward.functions)
    if cfg.reward.model:
        from actors.reward_model import reward_model_reward
        from rlhf.models import resolve_model

        handle = session.start_reward_model(resolve_model(cfg.reward.model))
        fn = reward_model_reward(handle, cfg.timeout_s)
        spec.append({"name": "reward_model", "fn": fn, "weight": cfg.reward.model_weight})
    rewards = load_rewards(spec)

    def scorer(completions: list[str], rows: list[dict]) -> tuple[list[float | None], dict[str, Any]]:
        return score_samples(rewards, completions, rows, cfg.reward.on_error, timeout_s=cfg.reward.timeout_s)

    return scorer, rewards


def _sampling(cfg: RunConfig, tokenizer: Any) -> dict[str, Any]:
    g = cfg.generator
    return {"n": g.n, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
            "max_tokens": g.max_tokens, "stop_token_ids": [tokenizer.eos_token_id]}


def load_prompts(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], dict[str, Any], list[dict]]:
    """Tokenized prompt rows (every dataset column kept for the rewards), their counts, and held-out
    prompts for ``eval_every`` (``data.eval`` when given, else ``data.eval_size`` rows split off)."""
    d = cfg.data
    rows = rdata.load_dataset_spec(data_spec(cfg), "prompts", seed=cfg.train.seed, n=d.size, split=d.split,
                                   subset=d.subset, columns=d.columns)
    eval_rows: list[dict] = []
    if cfg.eval_every:
        if cfg.data.eval:
            eval_rows = rdata.load_rows(cfg.data.eval, columns=d.columns)
        else:
            rows, eval_rows = rdata.train_eval_split(rows, cfg.data.eval_size, seed=cfg.train.seed)
    m = cfg.model
    prompts, stats = rdata.tokenize_prompts(rows, tokenizer, max_prompt_length=m.max_prompt_length,
                                            policy=m.truncation, source=cfg.data.train)
    held_out: list[dict] = []
    if eval_rows:
        held_out, _ = rdata.tokenize_prompts(eval_rows, tokenizer, max_prompt_length=m.max_prompt_length,
                                             policy=m.truncation, source=cfg.data.eval or cfg.data.train)
    return prompts, stats, held_out


def evaluate_prompts(session: Any, held_out: list[dict], rewards: list[Any], sampling: dict[str, Any],
                     threshold: float = 1.0) -> dict[str, Any]:
    """Mean reward and pass@k of the current policy on held-out prompts (``rlhf.passk.score_generations``,
    the code ``python -m rlhf.eval`` uses), ``eval/``-prefixed."""
    from rlhf.passk import score_generations

    outputs = session.generate([p["prompt_ids"] for p in held_out], sampling)
    scores = score_generations(outputs, held_out, rewards, k=sampling["n"], threshold=threshold)
    return {f"eval/{k}": v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}


def _apply_truncation(flat: list[tuple], rewards: list[float | None], policy: str,
                      penalty: float) -> tuple[list[float | None], int]:
    """Completions cut at ``max_tokens`` (finish reason ``length``): kept, dropped (reward None) or given
    ``penalty`` as their reward. Returns the rewards and how many were truncated."""
    truncated = [s.get("finish_reason") == "length" for _, _, s in flat]
    if policy == "drop":
        rewards = [None if cut else r for r, cut in zip(rewards, truncated)]
    elif policy == "penalise":
        rewards = [penalty if cut and r is not None else r for r, cut in zip(rewards, truncated)]
    return rewards, sum(truncated)


def run_online_stage(session: Any, cfg: RunConfig, data: tuple[list[dict], Any, list[dict]], tokenizer: Any,
                     stage: StageRun) -> dict[str, Any]:
    """Run ``cfg.train.max_steps`` rollout steps of ``cfg.algo`` on ``data`` (``load_prompts``).

    The prompt order is drawn from ``random.Random(train.seed)``; a resumed stage restores that
    generator's state and the rest of the current order from its checkpoint, so it continues with
    the same prompts. (vLLM's sampling state is not restored: the completions of resumed steps
    are fresh draws.)

    With ``train.max_staleness = 1`` generation runs ahead: right after a step's samples arrive,
    the next step's prompts go to the generators (with the weights synced just before) while this
    step is scored and trained, so every sample is at most one policy version old; its loss is
    corrected with truncated importance weights (``train.is_cap``). With 0 (the default) each
    step generates after the previous update, synchronously.
    """
    objective = get(cfg.algo)
    params = objective_params(cfg)
    t, g = cfg.train, cfg.generator
    prompts, stats, held_out = data
    print(f"[{stage.name}] prompts: {stats}")
    session.start_generators()
    if objective.needs_reference(params):
        session.start_reference()
    scorer, rewards_list = make_scorer(cfg, session)
    sampling = _sampling(cfg, tokenizer)
    rng = random.Random(t.seed)
    order: list[int] = []
    history: list[float] = []
    done = stage.start()
    if done:
        position = stage.resume.data_position
        rng.setstate(decode_random_state(position["rng"]))
        order, history = list(position["order"]), list(position["history"])
    pad_id = tokenizer.pad_token_id
    reads = objective.prepare_reads(params) if objective.prepare_reads else ()
    on_policy = t.epochs == 1 and t.mini_batches == 1 and "old_logps" not in reads
    ahead = t.max_staleness > 0
    buffer = RolloutBuffer("prompts", max_staleness=t.max_staleness)
    from actors.learner_group import shipped_fields

    fields = shipped_fields(objective, params, on_policy, stale=ahead)
    bar = stage.progress.bar(stage.name, t.max_steps, initial=done)
    executor = ThreadPoolExecutor(1, thread_name_prefix="generate-ahead") if ahead else None
    pending: list[Any] = []  # [future, picked, policy version] of a generation running ahead

    def draw() -> list[int]:
        nonlocal order
        if len(order) < g.prompts_per_step:
            fresh = list(range(len(prompts)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[: g.prompts_per_step], order[g.prompts_per_step :]
        return picked

    def launch(picked: list[int], timer: PhaseTimer, metrics: dict[str, Any]) -> list[Any]:
        if session.synced_version != session.version:
            with timer.phase("sync"):
                metrics.update(session.sync_weights())
        ids = [prompts[i]["prompt_ids"] for i in picked]
        if executor is None:
            return [_Done(session.generate, ids, sampling), picked, session.version]
        future = executor.submit(session.generate, ids, sampling)
        return [future, picked, session.version]

    def position() -> dict[str, Any]:  # prompts already sent ahead go back in front of the order
        waiting = pending[1] if pending else []
        return {"rng": encode_random_state(rng.getstate()), "order": waiting + order, "history": history}

    for step in range(done, t.max_steps):
        timer = PhaseTimer()
        metrics: dict[str, Any] = {}
        if not pending:
            pending = launch(draw(), timer, metrics)
        with timer.phase("generate"):
            (future, picked, gen_version), pending = pending, []
            outputs = future.result()
        if ahead and step + 1 < t.max_steps:
            pending = launch(draw(), timer, metrics)  # runs while this step is scored and trained
        # group = the prompt's slot in this step (a prompt drawn twice across an epoch boundary
        # makes two groups, not one group of 2n)
        flat = [(slot, p, s) for slot, (p, samples) in enumerate(zip(picked, outputs)) for s in samples]
        with timer.phase("reward"):
            rewards, reward_stats = scorer([s["text"] for _, _, s in flat],
                                           [{**prompts[p], "completion_ids": s["completion_ids"]} for _, p, s in flat])
        rewards, truncated = _apply_truncation(flat, rewards, g.truncated, g.truncated_penalty)
        examples = [
            {"prompt_ids": prompts[p]["prompt_ids"], "completion_ids": s["completion_ids"], "reward": r,
             "group": slot, "behaviour_logps": s["logps"]}
            for (slot, p, s), r in zip(flat, rewards) if r is not None and s["completion_ids"]
        ]
        unit = t.mini_batches * t.num_learners * t.grad_accum
        keep = len(examples) - len(examples) % unit  # every rank gets the same number of micro-batches
        dropped = len(flat) - keep  # skipped by a reward, empty completions, and the trimmed tail
        if keep == 0:
            raise RuntimeError(f"[{stage.name}] every sample of this step was skipped ({reward_stats})")
        buffer.add(examples[:keep], version=gen_version)
        lag = session.version - gen_version
        metrics.update(buffer.staleness(session.version))
        batch_examples = buffer.take(current_version=session.version)
        batch = collate_samples(batch_examples, pad_id)
        is_cap = t.is_cap if lag > 0 else None
        if not on_policy:
            with timer.phase("old_logps"):
                batch["old_logps"] = session.learners.compute(batch)
            gap_mean, gap_max = logprob_gap(batch["behaviour_logps"], batch["old_logps"], batch["response_mask"])
            metrics.update({"logprob_gap/mean": gap_mean, "logprob_gap/max": gap_max})
            if is_cap is not None:
                batch["is_weights"] = truncated_is_weights(batch["old_logps"], batch["behaviour_logps"],
                                                           batch["response_mask"], is_cap)
        if objective.needs_reference(params):
            with timer.phase("ref_logps"):
                batch["ref_token_logps"] = session.reference_logps([[batch]])[0][0]
        if objective.prepare is not None:
            batch = objective.prepare(batch, params)
        with timer.phase("train"):
            metrics.update(_optimise(session, cfg, objective, params, batch, fields, on_policy, is_cap))
        reward_mean = float(batch["rewards"].mean())
        history.append(reward_mean)
        lengths = batch["response_mask"].sum(-1).float()
        metrics.update({
            "reward/mean": reward_mean, "reward/std": float(batch["rewards"].std()) if len(batch_examples) > 1 else 0.0,
            "reward/hist": [round(float(r), 4) for r in batch["rewards"]],
            "reward/skipped": float(reward_stats.get("skipped", 0)), "samples/dropped": float(dropped),
            "samples/truncated": float(truncated), "response/length": float(lengths.mean()),
            "samples": float(len(batch_examples)), "policy_version": float(session.version),
        })
        if cfg.eval_every and held_out and (step + 1) % cfg.eval_every == 0:
            with timer.phase("eval"):
                if session.synced_version != session.version:
                    metrics.update(session.sync_weights())
                metrics.update(evaluate_prompts(session, held_out, rewards_list, sampling))
        phases = timer.finish()
        metrics.update(phases)
        text = stage.progress.advance(bar, phases["time/step"], headline(metrics, HEADLINE), phases)
        stage.step_done(session, metrics, position())
        if not cfg.progress:
            print(f"[{stage.name}] step {step + 1}/{t.max_steps}: {text}", flush=True)
    bar.close()
    if executor is not None:
        executor.shutdown()
    stage.save(session, position())
    return {"stage": stage.name, "algo": cfg.algo, "steps": t.max_steps, "reward_first": history[0],
            "reward_last": history[-1], "reward_curve": history}


HEADLINE = ("reward/mean", "loss")


class _Done:
    """A call shaped like a ``Future`` that runs when its result is asked for (the synchronous path:
    no thread, no overlap)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def result(self) -> Any:
        return self.fn(*self.args)


def _optimise(session: Any, cfg: RunConfig, objective: Any, params: Any, batch: dict[str, torch.Tensor],
              fields: tuple[str, ...], on_policy: bool, is_cap: float | None = None) -> dict:
    """``epochs`` x ``mini_batches`` optimizer steps over one rollout batch; metrics of the last.

    A rollout that feeds one optimizer step (``on_policy``) is split in row order, so each group's
    samples stay together and share their prompt's forward; otherwise every epoch reshuffles.
    """
    from actors.learner_group import TrainStep

    t = cfg.train
    rows = batch["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(t.seed + session.version)
    metrics: dict[str, Any] = {}
    for _ in range(t.epochs):
        perm = torch.arange(rows) if on_policy else torch.randperm(rows, generator=gen)
        for mini in perm.chunk(t.mini_batches):
            mask = batch["response_mask"][mini]
            counts = GlobalCounts(examples=len(mini), tokens=int(mask.sum()), nonempty=int((mask.sum(-1) > 0).sum()))
            per_rank = session.learners.shard_rows(batch, mini, fields)
            metrics = session.learners.train_step(TrainStep(objective, params, counts, per_rank, on_policy, is_cap))
            if not metrics.get("skipped"):
                session.version += 1
    return metrics
