"""An online stage: prompts -> vLLM samples -> rewards -> advantages -> learner steps -> weight sync.

One rollout step:

1. sync the learner's weights into the generators if they changed (before every generation);
2. take ``prompts_per_step`` prompts, sample ``n`` completions each (the GRPO/RLOO group);
3. score them with the reward functions (and the reward model actor, if configured);
4. the learner recomputes the sampled tokens' log-probs (``old_logps``; the gap to vLLM's own
   log-probs is logged: a sync that silently did nothing shows up there);
5. reference log-probs when a KL term is on; ``objective.prepare`` computes advantages over the
   whole rollout batch;
6. ``epochs`` x ``mini_batches`` optimizer steps, each split over ranks x micro-batches with the
   mini-batch's global counts.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import torch
from tqdm import tqdm

from rlhf import data as rdata
from rlhf.batch import collate_samples, slice_rows
from rlhf.buffer import RolloutBuffer
from rlhf.config import RunConfig, objective_params
from rlhf.driver.offline import data_spec
from rlhf.metrics import MetricLogger
from rlhf.objectives import get


def logprob_gap(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and max absolute difference of two ``[R, T]`` log-prob tensors over ``mask``."""
    diff = (a - b).abs()[mask.bool()]
    if diff.numel() == 0:
        return 0.0, 0.0
    return float(diff.mean()), float(diff.max())


MODEL_INPUTS = ("input_ids", "attention_mask", "response_mask")


def _assemble(shape: torch.Size, blocks: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Row blocks ``(first_row, [rows, t])`` (trimmed to their own width) -> one ``[R, T]`` float tensor."""
    full = torch.zeros(shape, dtype=torch.float32)
    for start, out in blocks:
        full[start : start + out.shape[0], : out.shape[1]] = out.float()
    return full


def learner_token_logps(session: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Current-policy token log-probs ``[R, T]`` of ``batch``, rows split over the learner ranks."""
    ranks = session.cfg.train.num_learners
    rows = batch["input_ids"].shape[0]
    bounds = [(r * rows // ranks, (r + 1) * rows // ranks) for r in range(ranks)]
    parts = [slice_rows({k: batch[k] for k in MODEL_INPUTS}, slice(a, b)) for a, b in bounds]
    outs = session.learners.call("compute", per_rank=[(p, "token_logps") for p in parts])
    return _assemble(batch["input_ids"].shape, [(a, out) for (a, _), out in zip(bounds, outs)])


def _reference_token_logps(session: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = session.reference_logps([[{k: batch[k] for k in MODEL_INPUTS}]])[0][0]
    return _assemble(batch["input_ids"].shape, [(0, out)])


def make_scorer(cfg: RunConfig, session: Any) -> Any:
    """``(completions, rows) -> (rewards, stats)`` over the configured reward functions and model."""
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
        return score_samples(rewards, completions, rows, cfg.reward.on_error)

    return scorer


def _sampling(cfg: RunConfig, tokenizer: Any) -> dict[str, Any]:
    g = cfg.generator
    return {"n": g.n, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
            "max_tokens": g.max_tokens, "stop_token_ids": [tokenizer.eos_token_id]}


def load_prompts(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict], Any]:
    """Tokenized prompt rows (every dataset column kept for the rewards) and their counts."""
    rows = rdata.load_dataset_spec(data_spec(cfg), "prompts", seed=cfg.train.seed, n=cfg.data.size)
    return rdata.tokenize_prompts(rows, tokenizer, max_prompt_length=cfg.model.max_prompt_length,
                                  policy=cfg.model.truncation, source=cfg.data.train)


def run_online_stage(session: Any, cfg: RunConfig, data: tuple[list[dict], Any], tokenizer: Any,
                     logger: MetricLogger, stage_name: str) -> dict[str, Any]:
    """Run ``cfg.train.max_steps`` rollout steps of ``cfg.algo`` on ``data`` (``load_prompts``)."""
    objective = get(cfg.algo)
    params = objective_params(cfg)
    t, g = cfg.train, cfg.generator
    prompts, stats = data
    print(f"[{stage_name}] prompts: {stats}")
    session.start_generators()
    if objective.needs_reference(params):
        session.start_reference()
    scorer = make_scorer(cfg, session)
    sampling = _sampling(cfg, tokenizer)
    buffer = RolloutBuffer("prompts", max_staleness=0)
    rng = random.Random(t.seed)
    order: list[int] = []
    pad_id = tokenizer.pad_token_id
    history: list[float] = []
    bar = tqdm(range(t.max_steps), desc=stage_name, disable=not cfg.progress, dynamic_ncols=True)
    for _ in bar:
        metrics: dict[str, Any] = {}
        if session.synced_version != session.version:
            metrics.update(session.sync_weights())
        if len(order) < g.prompts_per_step:
            fresh = list(range(len(prompts)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[: g.prompts_per_step], order[g.prompts_per_step :]
        started = time.time()
        outputs = session.generate([prompts[i]["prompt_ids"] for i in picked], sampling)
        metrics["time/generate"] = time.time() - started
        # group = the prompt's slot in this step (a prompt drawn twice across an epoch boundary
        # makes two groups, not one group of 2n)
        flat = [(slot, p, s) for slot, (p, samples) in enumerate(zip(picked, outputs)) for s in samples]
        rewards, reward_stats = scorer([s["text"] for _, _, s in flat],
                                       [{**prompts[p], "completion_ids": s["completion_ids"]} for _, p, s in flat])
        examples = [
            {"prompt_ids": prompts[p]["prompt_ids"], "completion_ids": s["completion_ids"], "reward": r,
             "group": slot, "behaviour_logps": s["logps"]}
            for (slot, p, s), r in zip(flat, rewards) if r is not None and s["completion_ids"]
        ]
        unit = t.mini_batches * t.num_learners * t.grad_accum
        keep = len(examples) - len(examples) % unit  # every rank gets the same number of micro-batches
        dropped = len(flat) - keep  # skipped by a reward, empty completions, and the trimmed tail
        if keep == 0:
            raise RuntimeError(f"[{stage_name}] every sample of this step was skipped ({reward_stats})")
        buffer.add(examples[:keep], version=session.version)
        batch_examples = buffer.take(current_version=session.version)
        batch = collate_samples(batch_examples, pad_id)
        batch["old_logps"] = learner_token_logps(session, batch)
        gap_mean, gap_max = logprob_gap(batch["behaviour_logps"], batch["old_logps"], batch["response_mask"])
        if objective.needs_reference(params):
            batch["ref_token_logps"] = _reference_token_logps(session, batch)
        if objective.prepare is not None:
            batch = objective.prepare(batch, params)
        step_metrics = _optimise(session, cfg, objective, params, batch)
        reward_mean = float(batch["rewards"].mean())
        history.append(reward_mean)
        lengths = batch["response_mask"].sum(-1).float()
        metrics.update(step_metrics)
        metrics.update({
            "reward/mean": reward_mean, "reward/std": float(batch["rewards"].std()) if len(batch_examples) > 1 else 0.0,
            "reward/skipped": float(reward_stats.get("skipped", 0)), "samples/dropped": float(dropped),
            "response/length": float(lengths.mean()),
            "logprob_gap/mean": gap_mean, "logprob_gap/max": gap_max, "samples": float(len(batch_examples)),
            "policy_version": float(session.version),
        })
        logger.log(session.version, metrics, stage_name)
        bar.set_postfix({"reward": f"{reward_mean:.3f}", "gap": f"{gap_mean:.1e}"})
        if not cfg.progress:
            print(f"[{stage_name}] step {len(history)}: mean reward {reward_mean:.3f}", flush=True)
    bar.close()
    return {"stage": stage_name, "algo": cfg.algo, "steps": t.max_steps, "reward_first": history[0],
            "reward_last": history[-1], "reward_curve": history}


def _optimise(session: Any, cfg: RunConfig, objective: Any, params: Any, batch: dict[str, torch.Tensor]) -> dict:
    """``epochs`` x ``mini_batches`` optimizer steps over one rollout batch; metrics of the last."""
    t = cfg.train
    rows = batch["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(t.seed + session.version)
    params_dict = dataclasses.asdict(params)
    metrics: dict[str, Any] = {}
    for _ in range(t.epochs):
        perm = torch.randperm(rows, generator=gen)
        for mini in perm.chunk(t.mini_batches):
            counts = {"examples": len(mini), "tokens": int(batch["response_mask"][mini].sum())}
            micro = mini.chunk(t.num_learners * t.grad_accum)
            per_rank = [[slice_rows(batch, micro[r * t.grad_accum + a]) for a in range(t.grad_accum)]
                        for r in range(t.num_learners)]
            metrics = session.learners.call(
                "train_step", per_rank=[(mbs, cfg.algo, params_dict, counts) for mbs in per_rank])[0]
            session.version += 1
    return metrics
