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

from rlhf.checkpoint import atomic_dir
from rlhf.config import ConfigError, RunConfig, build_config, dump, output_dir
from rlhf.objectives import get, names
from rlhf.schedule import build_schedule, generates_ahead, parse_schedule


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
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its newest complete checkpoint (with DIR/config.yaml; "
                        "--max-steps may extend it)")
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
    if args.resume:
        return resume_config(Path(args.resume), flags, args.overrides)
    algo = args.algo or (None if args.config else "simpo")
    return build_config(algo=algo, config_file=args.config, flags=flags, overrides=args.overrides)


def resume_config(run_dir: Path, flags: dict[str, Any], overrides: list[str]) -> RunConfig:
    """The config of the run in ``run_dir`` (its ``config.yaml``) with ``flags``/``overrides`` applied;
    a change that would not continue the same run, or a folder with no run, fails in one line."""
    from rlhf.checkpoint import check_resume_config, latest_complete
    from rlhf.config import load_yaml, to_dict

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no run there (no config.yaml)")
    if latest_complete(run_dir) is None:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} "
                          f"(the run stopped before its first one; checkpoint.every=N writes one every N steps)")
    if flags.get("stages") or flags.get("data") or flags.get("model"):
        raise ConfigError("--resume continues a run as it was configured: --schedule, --data and --model cannot change")
    cfg = build_config(algo=None, config_file=str(saved), flags={**flags, "output_dir": str(run_dir)},
                       overrides=overrides)
    reasons = check_resume_config(load_yaml(saved), to_dict(cfg))
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise ConfigError(f"--resume {run_dir}: {reasons[0]}{more}")
    return cfg


def finished(cfg: RunConfig) -> bool:
    """Whether the run in ``output_dir(cfg)`` already did every step of ``cfg`` and saved its model."""
    from rlhf.checkpoint import is_complete, latest_complete, load_state

    out = output_dir(cfg)
    checkpoint = latest_complete(out)
    if checkpoint is None or not is_complete(out / "model") or not (out / "summary.json").is_file():
        return False
    planned = sum(s.cfg.train.max_steps for s in build_schedule(cfg))
    return load_state(checkpoint).global_step >= planned


def list_params(algo: str) -> str:
    import dataclasses

    objective = get(algo)
    lines = [f"{objective.name} ({objective.mode}, data: {objective.data}) {objective.paper}".rstrip()]
    for f in dataclasses.fields(objective.params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  objective.{f.name} = {default!r}")
    return "\n".join(lines)


def train(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Run every stage of ``cfg`` on one set of live actors; return the run summary.

    With ``resume``, the run in ``output_dir(cfg)`` continues from its newest complete checkpoint.
    """
    from rlhf.checkpoint import latest_complete, load_rng, load_state, set_rng_state
    from rlhf.config import to_dict
    from rlhf.driver.progress import ScheduleProgress
    from rlhf.driver.session import Session, check_same_learners
    from rlhf.metrics import MetricLogger
    from rlhf.models import load_tokenizer, resolve_model

    stages = build_schedule(cfg)
    cfg, stages = _fit_local_gpus(cfg, stages)
    for stage in stages[1:]:  # before anything starts: stages share the live learners
        check_same_learners(stages[0].cfg, stage.cfg, stage.name)
    out = output_dir(cfg)
    checkpoint = latest_complete(out) if resume else None
    state = load_state(checkpoint) if checkpoint is not None else None
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    model_path = resolve_model(cfg.model.path)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    score_head = any(get(s.cfg.algo).output == "score" for s in stages)
    if score_head and len(stages) > 1:
        raise ConfigError("a reward-model stage trains a scoring head and cannot share a schedule with policy stages")
    total_steps = stages[0].cfg.train.max_steps * _updates_per_step(stages[0].cfg)  # each stage restarts it
    data = [load_stage_data(s.cfg, tokenizer) for s in stages]  # bad data fails before any actor starts
    logger = MetricLogger(out, cfg.logging, to_dict(cfg), resume_step=state.metrics_step if state else None)
    started = time.time()
    progress = ScheduleProgress(sum(s.cfg.train.max_steps for s in stages), done=state.global_step if state else 0,
                                enabled=cfg.progress)
    first = stages[state.stage_index if state else 0]
    session = Session(stages[0].cfg, model_path, total_steps=total_steps, score_head=score_head,
                      ahead=generates_ahead(stages))
    summaries: list[dict[str, Any]] = list(state.extra.get("summaries", [])) if state else []
    try:
        session.start_learners(prestart_generators=first.online, prestart_reference=first.needs_reference)
        for stage, stage_data in zip(stages, data):
            if state is not None and stage.index < state.stage_index:
                continue  # finished before the checkpoint; its summary came with it
            run = _stage_run(stage, cfg, out, progress, logger, summaries)
            if state is not None and stage.index == state.stage_index:
                run.resume, run.last_checkpoint = state, checkpoint
            _start_stage(session, stage)
            if run.resume is not None:
                _restore(session, checkpoint, state, load_rng, set_rng_state)
            summaries.append(run_stage(session, stage, stage_data, tokenizer, run))
            _release_unneeded(session, stages[stage.index + 1 :])
        print(f"saving the model to {out / 'model'}")
        with atomic_dir(out / "model") as tmp:
            session.learners.save(str(tmp))
        started_actors = session.started_actors()
        placement = session.actor_nodes()
    except BaseException as err:
        logger.close()
        raise _learner_death(err, out) from err
    finally:
        session.close()
    summary = {"stages": summaries, "wall_s": round(time.time() - started, 1), "output_dir": str(out),
               "model": str(out / "model"), "actors": started_actors, "steps": session.steps,
               "placement": placement}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _report(out, logger)
    return summary


def _fit_local_gpus(cfg: RunConfig, stages: list[Any]) -> tuple[RunConfig, list[Any]]:
    """On a private local cluster with CUDA, let roles share GPUs when there are too few (``rlhf.driver.fit``)."""
    from rlhf.driver.session import resolve_device

    if cfg.ray_address or resolve_device(cfg) != "cuda":
        return cfg, stages
    import torch

    from rlhf.driver.fit import fit_to_gpus

    fitted, changes = fit_to_gpus(cfg, stages, torch.cuda.device_count())
    for change in changes:
        print(f"fitting the run to this machine: {change}")
    return (fitted, build_schedule(fitted)) if changes else (cfg, stages)


def _stage_run(stage: Any, cfg: RunConfig, out: Path, progress: Any, logger: Any,
               summaries: list[dict[str, Any]]) -> Any:
    from rlhf.driver.durable import StageRun

    c, t = stage.cfg.checkpoint, stage.cfg.train
    return StageRun(index=stage.index, name=stage.name, out_dir=out, every=c.every, keep=c.keep,
                    max_bad_steps=t.max_bad_steps, progress=progress, logger=logger,
                    extra={"summaries": summaries})


def _release_unneeded(session: Any, later: list[Any]) -> None:
    """End the generators / reference when no later stage uses them (a schedule frees their memory)."""
    online = any(s.online for s in later)
    reference = any(s.needs_reference for s in later)
    released = session.release(generators=not online, reference=not reference) if later else []
    if released:
        print(f"released the {' and '.join(released)}: no later stage needs them")


def _start_stage(session: Any, stage: Any) -> None:
    t = stage.cfg.train
    session.learners.start_stage(t.lr, t.warmup_steps, t.max_steps * _updates_per_step(stage.cfg), t.min_lr_ratio,
                                 stage.reset_optimizer)


def _restore(session: Any, checkpoint: Path, state: Any, load_rng: Any, set_rng_state: Any) -> None:
    """Put the learners, the driver's RNG and the step counters back where ``checkpoint`` left them."""
    from rlhf.driver.durable import LEARNER_TAG

    print(f"resuming from {checkpoint} (step {state.global_step}, stage {state.stage_name} step {state.stage_step})")
    session.learners.load_checkpoint(str(checkpoint), LEARNER_TAG)
    if any(Path(where) != Path(checkpoint) for where in session.learners.loaded_from):
        print(f"learners read the checkpoint from {', '.join(session.learners.loaded_from)} (shipped through Ray)",
              flush=True)
    set_rng_state(load_rng(checkpoint, "driver"))
    session.steps = state.global_step
    session.version = int(state.extra.get("version", state.global_step))


def _learner_death(err: BaseException, out: Path) -> BaseException:
    """A learner that died (or failed) ends the run with one line naming it and how to resume."""
    from actors.group import ActorCallError
    from rlhf.checkpoint import latest_complete

    if isinstance(err, ActorCallError) and "Learner" in str(err):
        if latest_complete(out) is None:  # nothing to resume from: say so rather than offer --resume
            return RuntimeError(f"{err} -- the run stopped before its first checkpoint")
        return RuntimeError(f"{err} -- the run stopped; continue it with: python -m rlhf.run --resume {out}")
    return err


def _report(out: Path, logger: Any) -> None:
    """``report.md`` and its plots; the plots also go to W&B when it is on. Never fails the run."""
    try:
        from rlhf.report import report_images, write_report

        path = write_report(out)
        logger.log_images(report_images(out))
        print(f"report: {path}")
    except Exception as err:  # noqa: BLE001 - the model and metrics are saved; a plot must not fail the run
        print(f"warning: could not write the run report ({type(err).__name__}: {err})", file=sys.stderr)
    finally:
        logger.close()


def _updates_per_step(cfg: RunConfig) -> int:
    return cfg.train.epochs * cfg.train.mini_batches if get(cfg.algo).mode == "online" else 1


def load_stage_data(cfg: RunConfig, tokenizer: Any) -> Any:
    """A stage's tokenized data: offline examples and held-out pairs, or online prompts."""
    if get(cfg.algo).mode == "offline":
        from rlhf.driver.offline import load_offline_data

        return load_offline_data(cfg, tokenizer)
    from rlhf.driver.online import load_prompts

    return load_prompts(cfg, tokenizer)


def run_stage(session: Any, stage: Any, data: Any, tokenizer: Any, run: Any) -> dict[str, Any]:
    if get(stage.cfg.algo).mode == "offline":
        from rlhf.driver.offline import run_offline_stage

        return run_offline_stage(session, stage.cfg, data, tokenizer, run)
    from rlhf.driver.online import run_online_stage

    return run_online_stage(session, stage.cfg, data, tokenizer, run)


def main(argv: list[str] | None = None) -> int:
    """The command line. Every failure is one ``error: ...`` line on stderr, never a traceback
    (``RLHF_DEBUG=1`` re-raises): exit 2 for bad input (arguments, config, model, data, the
    user's modules) found before any actor starts, 1 for a failure while training."""
    parser = build_parser()
    parser.error = _usage_error  # type: ignore[method-assign]  # one line instead of usage + message
    try:
        args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between options
        for module in args.imports:
            _import_user_module(module)
        if args.list_params:
            print(list_params(args.list_params))
            return 0
        cfg = config_from_args(args)
        _load_user_rewards(cfg)
    except (ConfigError, ValueError, ImportError) as err:
        return _fail(err, 2)
    if args.resume and finished(cfg):
        print(f"the run in {args.resume} already finished all its steps; nothing to do "
              f"(--max-steps N with a larger N extends it)")
        return 0
    from rlhf.data.schema import DataError

    try:
        summary = train(cfg, resume=bool(args.resume))
    except (ConfigError, DataError) as err:  # bad input found by the driver before any actor started
        return _fail(err, 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line; the whole traceback goes to a log file
        return _fail(err, 1, hint=True, log_dir=output_dir(cfg))
    print(f"done in {summary['wall_s']} s; model: {summary['model']}; metrics: {Path(summary['output_dir'])}")
    return 0


class _UsageError(ConfigError):
    """A command-line argument argparse refused."""


def _usage_error(message: str) -> None:
    raise _UsageError(f"{message} (python -m rlhf.run --help lists the arguments)")


def _import_user_module(module: str) -> None:
    """``--import MODULE``: the user's own code, imported on request; its failure is one line."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"--import {module}: {_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - an error inside the user's module
        raise ConfigError(f"--import {module}: importing it failed: {type(err).__name__}: {_first_line(err)}") from None


def _load_user_rewards(cfg: RunConfig) -> None:
    """Import the ``module:function`` rewards of every online stage now, before any actor starts.

    Config validation only looks these modules up on ``sys.path`` (no code named by a config runs
    while it is checked); importing them here is the run doing what the user asked for, and a
    missing function or a module that fails to import ends the run before Ray starts.
    """
    from rlhf.rewards.registry import load_rewards

    for stage in build_schedule(cfg):
        if stage.online and stage.cfg.reward.functions:
            try:
                load_rewards(list(stage.cfg.reward.functions))
            except ValueError as err:
                raise ConfigError(f"reward.functions: {_first_line(err)}") from None


def _write_traceback(err: BaseException, log_dir: Path) -> Path | None:
    """Append ``err``'s whole traceback (and, for an actor's failure, the remote one) to ``log_dir/error.log``."""
    import traceback

    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "error.log"
        with path.open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
            cause = getattr(err, "cause", None) or getattr(err.__cause__, "cause", None)
            if cause is not None:
                f.write("--- in the actor:\n" + str(cause) + "\n")
        return path
    except OSError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fail(err: BaseException, code: int, hint: bool = False, log_dir: Path | None = None) -> int:
    if os.environ.get("RLHF_DEBUG"):
        raise err
    message = _first_line(err)
    if hint:
        known = isinstance(err, ValueError | KeyError | OSError | RuntimeError | TimeoutError | FloatingPointError)
        message = message if known else f"{type(err).__name__}: {message}"
        log = _write_traceback(err, log_dir) if log_dir is not None else None
        message += f"  (full traceback: {log})" if log else "  (RLHF_DEBUG=1 shows the traceback)"
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
