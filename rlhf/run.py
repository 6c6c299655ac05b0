"""Train a language model with one objective or a schedule of them.

Single machine, embedded model and data, nothing downloaded::

    python -m rlhf.run --algo simpo
    python -m rlhf.run --algo grpo --max-steps 20 --output-dir runs/grpo
    python -m rlhf.run --algo dpo --model path/to/hf_folder --data pairs.jsonl train.lr=5e-7 objective.beta=0.1

A schedule on the same live actors (SimPO, then GRPO)::

    python -m rlhf.run --config configs/simpo_then_grpo.yaml

On a Ray cluster (the driver joins it; actors are placed by Ray)::

    ray job submit --working-dir . -- python -m rlhf.run --config configs/grpo.yaml ray_address=auto

Outputs in ``--output-dir``: ``model/`` (a Hugging Face folder), ``metrics.jsonl``,
``tensorboard/``, ``config.yaml`` (every value used) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, RunConfig, build_config, dump, output_dir
from rlhf.objectives import get, names
from rlhf.schedule import build_schedule, parse_schedule


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rlhf.run",
        description="Post-train a causal LM on Ray + DeepSpeed (+ vLLM for online RL).",
        epilog=(
            "Overrides: any config key as key=value, dotted, e.g. train.lr=1e-5 objective.beta=2.0 "
            "generator.n=8 model.lora_r=8 train.zero_stage=2 train.num_learners=2. "
            "See configs/*.yaml for every section; --list-params ALGO shows an objective's parameters."
        ),
    )
    p.add_argument("--algo", help=f"objective to train: {', '.join(names())} (default: simpo)")
    p.add_argument("--config", help="YAML file (sections model/train/data/generator/reward/objective, or stages)")
    p.add_argument("--data", help='training data: "default", "rg:TASK", or a local .jsonl/.json/.parquet file')
    p.add_argument("--model", help='policy: "default" (SmolLM2-135M-Instruct, embedded), "tiny", or a folder')
    p.add_argument("--output-dir", help="where the model, metrics and config go (default: runs/ALGO)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (online: rollout steps)")
    p.add_argument("--schedule", help='stages as "algo:steps,algo:steps", e.g. simpo:40,grpo:20')
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom objectives or rewards), e.g. examples.custom_objective")
    p.add_argument("--list-params", metavar="ALGO", help="print an objective's parameters and defaults, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    flags: dict[str, Any] = {}
    if args.data:
        flags["data"] = {"train": args.data}
    if args.model:
        flags["model"] = {"path": args.model}
    if args.output_dir:
        flags["output_dir"] = args.output_dir
    if args.max_steps is not None:
        flags["train"] = {"max_steps": args.max_steps}
    if args.schedule:
        flags["stages"] = parse_schedule(args.schedule)
    algo = args.algo or (None if args.config else "simpo")
    return build_config(algo=algo, config_file=args.config, flags=flags, overrides=args.overrides)


def list_params(algo: str) -> str:
    import dataclasses

    objective = get(algo)
    lines = [f"{objective.name} ({objective.mode}, data: {objective.data}) {objective.paper}".rstrip()]
    for f in dataclasses.fields(objective.params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  objective.{f.name} = {default!r}")
    return "\n".join(lines)


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage of ``cfg`` on one set of live actors; return the run summary."""
    from rlhf.driver.session import Session, check_same_learners
    from rlhf.metrics import MetricLogger
    from rlhf.models import load_tokenizer, resolve_model

    stages = build_schedule(cfg)
    for stage in stages[1:]:  # before anything starts: stages share the live learners
        check_same_learners(stages[0].cfg, stage.cfg, stage.name)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    model_path = resolve_model(cfg.model.path)
    tokenizer = load_tokenizer(model_path)
    score_head = any(get(s.cfg.algo).output == "score" for s in stages)
    if score_head and len(stages) > 1:
        raise ConfigError("a reward-model stage trains a scoring head and cannot share a schedule with policy stages")
    total_steps = stages[0].cfg.train.max_steps * _updates_per_step(stages[0].cfg)  # each stage restarts it
    data = [load_stage_data(s.cfg, tokenizer) for s in stages]  # bad data fails before any actor starts
    logger = MetricLogger(out)
    started = time.time()
    session = Session(stages[0].cfg, model_path, total_steps=total_steps, score_head=score_head)
    summaries = []
    try:
        session.start_learners()
        for stage, stage_data in zip(stages, data):
            summaries.append(run_stage(session, stage, stage_data, tokenizer, logger))
        print(f"saving the model to {out / 'model'}")
        session.learners.call("save", str(out / "model"))
        started_actors = session.started_actors()
    finally:
        logger.close()
        session.close()
    summary = {"stages": summaries, "wall_s": round(time.time() - started, 1), "output_dir": str(out),
               "model": str(out / "model"), "actors": started_actors}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _updates_per_step(cfg: RunConfig) -> int:
    return cfg.train.epochs * cfg.train.mini_batches if get(cfg.algo).mode == "online" else 1


def load_stage_data(cfg: RunConfig, tokenizer: Any) -> Any:
    """A stage's tokenized data: offline examples and held-out pairs, or online prompts."""
    if get(cfg.algo).mode == "offline":
        from rlhf.driver.offline import load_offline_data

        return load_offline_data(cfg, tokenizer)
    from rlhf.driver.online import load_prompts

    return load_prompts(cfg, tokenizer)


def run_stage(session: Any, stage: Any, data: Any, tokenizer: Any, logger: Any) -> dict[str, Any]:
    t = stage.cfg.train
    session.learners.call("start_stage", t.lr, t.warmup_steps, t.max_steps * _updates_per_step(stage.cfg),
                          t.min_lr_ratio, stage.reset_optimizer)
    if get(stage.cfg.algo).mode == "offline":
        from rlhf.driver.offline import run_offline_stage

        return run_offline_stage(session, stage.cfg, data, tokenizer, logger, stage.name)
    from rlhf.driver.online import run_online_stage

    return run_online_stage(session, stage.cfg, data, tokenizer, logger, stage.name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for module in args.imports:
            importlib.import_module(module)
        if args.list_params:
            print(list_params(args.list_params))
            return 0
        cfg = config_from_args(args)
    except (ConfigError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except (ValueError, KeyError, OSError, RuntimeError, TimeoutError, FloatingPointError) as err:
        if os.environ.get("RLHF_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}  (RLHF_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    print(f"done in {summary['wall_s']} s; model: {summary['model']}; metrics: {Path(summary['output_dir'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
