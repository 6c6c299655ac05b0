"""Evaluate a model: mean reward and pass@k on prompts, or preference accuracy on pairs.

Prompts (``rg:TASK``, ``default``, or a file of ``{prompt, answer?, ...}`` rows)::

    python -m rlhf.eval --model runs/grpo/model --data rg:chain_sum --limit 64 --samples 8 --output E.json

samples ``--samples K`` completions per prompt with vLLM (one engine in this process), scores
them with the reward functions (default ``reasoning_gym``, the task's own verifier; ``--reward``
and/or ``--reward-model`` instead) and reports the mean reward, pass@1, pass@2, pass@4, ...,
pass@K with the unbiased estimator of Chen et al. 2021 (``rlhf.passk``). A sample is correct
when its reward is ``>= --threshold`` (default 1.0, a verifier's full score; set it on the
reward model's scale when scoring with one).

Pairs (a file of ``{prompt, chosen, rejected}`` rows, or ``--kind pairs`` for ``rg:TASK``)::

    python -m rlhf.eval --model runs/simpo/model --data pairs.jsonl                  # SimPO's reward
    python -m rlhf.eval --model runs/dpo/model --data pairs.jsonl --reference tiny   # DPO's reward
    python -m rlhf.eval --data pairs.jsonl --reward-model runs/rm/model              # a reward model

reports how often chosen scores above rejected (a tie counts half), exactly as training's
held-out accuracy (``rlhf.driver.evaluate.preference_accuracy``) with the objective's implicit
reward: SimPO's length-averaged log-prob by default, DPO's ``beta * (log pi - log pi_ref)`` with
``--reference``, the scalar head of a ``--algo rm`` folder with ``--reward-model``.

Prints a short table; ``--output FILE.json`` also writes every number and the settings used.
Bad input (a missing model, an unknown task, an unreadable file) prints one ``error: ...`` line
and exits with code 2; a failure while running exits with 1 (``RLHF_DEBUG=1`` shows tracebacks).
Nothing is downloaded (``HF_HUB_OFFLINE=1`` unless set otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf.config import GeneratorConfig, ModelConfig
from rlhf.passk import score_generations

KINDS = ("auto", "prompts", "pairs")
DEFAULT_REWARD = "reasoning_gym"
COUNTS = ("prompts", "samples", "reward/skipped", "pairs")


class InputError(ValueError):
    """Bad input found before any work started: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    model_defaults, gen_defaults = ModelConfig(), GeneratorConfig()
    p = argparse.ArgumentParser(
        prog="python -m rlhf.eval",
        description="Mean reward and pass@k on prompts (vLLM samples), or preference accuracy on pairs.",
    )
    p.add_argument("--model", help='policy: "default" (SmolLM2-135M-Instruct), "tiny", or a folder '
                                   "(not needed for pairs scored by --reward-model)")
    p.add_argument("--data", required=True, help='"rg:TASK", "default" (rg:chain_sum) or a .jsonl/.json/.parquet file')
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="auto: rg:/default -> prompts; a file -> pairs when its rows have chosen and rejected")
    p.add_argument("--limit", type=int, help="first N rows (rg: tasks build N rows; default: all, 256 for rg:)")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt, K of pass@K (default 4)")
    p.add_argument("--threshold", type=float, default=1.0,
                   help="a sample is correct when its reward >= THRESHOLD (default 1.0: a verifier's full score)")
    p.add_argument("--reward", action="extend", nargs="+", metavar="FN",
                   help=f"reward functions: built-in names or module:function (default {DEFAULT_REWARD}; "
                        "none when --reward-model is given)")
    p.add_argument("--reward-model", metavar="PATH",
                   help="a folder saved by --algo rm: a reward for prompts, the scorer for pairs")
    p.add_argument("--reference", metavar="PATH",
                   help="pairs: reference policy for DPO's implicit reward beta*(log pi - log pi_ref)")
    p.add_argument("--beta", type=float, help="pairs: beta of the implicit reward (default: the objective's)")
    p.add_argument("--temperature", type=float, default=gen_defaults.temperature,
                   help=f"sampling temperature; 0 = greedy, needs --samples 1 (default {gen_defaults.temperature})")
    p.add_argument("--top-p", type=float, default=gen_defaults.top_p, help=f"(default {gen_defaults.top_p})")
    p.add_argument("--max-tokens", type=int, default=gen_defaults.max_tokens,
                   help=f"tokens per completion (default {gen_defaults.max_tokens})")
    p.add_argument("--max-prompt-length", type=int, default=model_defaults.max_prompt_length,
                   help=f"prompt tokens (default {model_defaults.max_prompt_length}; longer prompts are cut "
                        "from the left)")
    p.add_argument("--max-length", type=int, default=model_defaults.max_length,
                   help=f"pairs: prompt + completion tokens (default {model_defaults.max_length})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--data-seed", type=int, help="seed of rg: task rows (default: --seed)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (default 16)")
    p.add_argument("--output", metavar="FILE.json", help="write every number and the settings here")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with a model folder (as model.trust_remote_code in a run)")
    return p


# ---- input ---------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    positive = {"--samples": args.samples, "--max-tokens": args.max_tokens, "--batch-size": args.batch_size,
                "--max-prompt-length": args.max_prompt_length}
    for flag, value in positive.items():
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {args.temperature}")
    if args.temperature == 0 and args.samples > 1:
        raise InputError(f"--temperature 0 is greedy: every sample would be the same; use --samples 1, "
                         f"not {args.samples}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.reference and args.reward_model:
        raise InputError("give --reference (DPO's implicit reward) or --reward-model, not both")
    if args.beta is not None and args.beta <= 0:
        raise InputError(f"--beta must be > 0, got {args.beta}")


def _model_folder(name: str, what: str) -> str:
    """``resolve_model`` plus a check that a local folder holds a model (its config.json)."""
    from rlhf.models import resolve_model

    try:
        path = resolve_model(name)
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: {exc}") from None
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise InputError(f"{what} {name!r}: folder {path!r} has no config.json (not a Hugging Face model folder)")
    return path


def load_data(spec: str, kind: str, limit: int | None, seed: int) -> tuple[str, list[dict]]:
    """``(kind, rows)``: ``kind`` resolved from ``auto`` (see ``--kind``), rows validated for it."""
    from rlhf.data import DataError, load_dataset_spec, validate_rows

    builtin = spec == "default" or spec.startswith("rg:")
    try:
        if builtin:
            kind = "prompts" if kind == "auto" else kind
            rows = load_dataset_spec(spec, kind, seed=seed, n=limit)
        else:
            rows = load_dataset_spec(spec, "prompts", n=limit)  # prompt checks hold for pair rows too
            if kind == "auto":
                kind = "pairs" if rows and all("chosen" in r and "rejected" in r for r in rows) else "prompts"
            validate_rows(rows, kind, spec)
    except (DataError, OSError, ValueError, KeyError) as exc:
        raise InputError(_first_line(exc)) from None
    if not rows:
        raise InputError(f"data {spec!r} has no rows")
    return kind, rows


def _tokenizer(path: str, trust_remote_code: bool = False):
    from rlhf.models import load_tokenizer

    try:
        return load_tokenizer(path, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(_first_line(exc)) from None


# ---- prompts -------------------------------------------------------------------------------


def local_reward_model(path: str, device: str, name: str = "reward_model", trust_remote_code: bool = False):
    """A batch reward scoring ``prompt + completion`` with a ``--algo rm`` folder in this process.

    Same inputs as ``actors.reward_model.reward_model_reward`` (``prompt_ids`` / ``completion_ids``
    of the row when present, else the text), without a Ray actor.
    """
    import torch

    from actors.reward_model import RewardModelActor
    from rlhf.rewards import batched

    threads = torch.get_num_threads()
    scorer = RewardModelActor({"model_path": path, "device": device, "trust_remote_code": trust_remote_code})
    with contextlib.suppress(RuntimeError):
        torch.set_num_threads(threads)  # the actor pins the threads Ray gave it; here the process has all

    def reward(completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        prompts = [row["prompt_ids"] if "prompt_ids" in row else row["prompt"] for row in rows]
        targets = [row.get("completion_ids", c) for c, row in zip(completions, rows)]
        return scorer.score(prompts, targets)

    reward.__name__ = reward.__qualname__ = name
    return batched(reward)


def _reward_spec(args: argparse.Namespace) -> list[Any]:
    from rlhf.rewards import load_rewards

    names = list(args.reward) if args.reward else ([] if args.reward_model else [DEFAULT_REWARD])
    if names:
        try:
            load_rewards(names)  # unknown names fail here, before any model loads
        except ValueError as exc:
            raise InputError(_first_line(exc)) from None
    return names


def _dry_run(names: list[str], row: Mapping[str, Any]) -> None:
    """Score an empty answer on the first row: a reward that cannot read this data fails now, not
    after generation (e.g. ``reasoning_gym`` on rows without ``task`` or ``metadata``)."""
    from rlhf.rewards import load_rewards, score_samples

    if not names:
        return
    try:
        score_samples(load_rewards(names), [""], [dict(row)])
    except ValueError as exc:
        raise InputError(f"{_first_line(exc)} (on row 0 of the data)") from None


def evaluate_prompts(args: argparse.Namespace, rows: list[dict], report: dict[str, Any]) -> dict[str, Any]:
    """Generate ``args.samples`` completions per prompt, score them; fills and returns ``report``."""
    import torch

    from rlhf.data import tokenize_prompts

    if not args.model:
        raise InputError("--model is needed to sample completions")
    model_path = _model_folder(args.model, "model")
    reward_model = _model_folder(args.reward_model, "reward model") if args.reward_model else None
    names = _reward_spec(args)
    _dry_run(names, rows[0])
    tokenizer = _tokenizer(model_path, args.trust_remote_code)
    try:
        prompts, stats = tokenize_prompts(rows, tokenizer, max_prompt_length=args.max_prompt_length,
                                          policy="truncate", source=args.data)
    except ValueError as exc:
        raise InputError(_first_line(exc)) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report["settings"].update({"model_path": model_path, "reward": names, "device": device})
    report["data"] = stats.as_dict()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from actors.generator import GeneratorActor

    started = time.perf_counter()
    longest = max(len(p["prompt_ids"]) for p in prompts)
    generator = GeneratorActor(0, {
        "model_path": model_path, "device": device, "seed": args.seed, "trust_remote_code": args.trust_remote_code,
        "max_model_len": longest + args.max_tokens + 1, "kv_cache_bytes": GeneratorConfig().kv_cache_mb << 20,
    })
    report["timing"]["engine_start_s"] = round(time.perf_counter() - started, 3)
    sampling = {"n": args.samples, "temperature": args.temperature, "top_p": args.top_p,
                "max_tokens": args.max_tokens, "stop_token_ids": [tokenizer.eos_token_id]}
    started = time.perf_counter()
    samples = generator.generate([p["prompt_ids"] for p in prompts], sampling)
    report["timing"]["generate_s"] = round(time.perf_counter() - started, 3)

    spec: list[Any] = list(names)
    if reward_model:
        spec.append({"name": "reward_model",
                     "fn": local_reward_model(reward_model, device, trust_remote_code=args.trust_remote_code)})
    started = time.perf_counter()
    metrics = score_generations(samples, prompts, spec, k=args.samples, threshold=args.threshold, details=True)
    report["timing"]["score_s"] = round(time.perf_counter() - started, 3)
    per_prompt = metrics.pop("per_prompt")
    report["metrics"] = metrics
    report["per_prompt"] = [
        {"index": i, "prompt": p["prompt_text"], **outcome, "completions": [s["text"] for s in group]}
        for i, (p, outcome, group) in enumerate(zip(prompts, per_prompt, samples))
    ]
    return report


# ---- pairs ---------------------------------------------------------------------------------


class _LocalModel:
    """Stands in for the learner group of ``preference_accuracy``: one model forward in this process."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def compute(self, batch: dict, output: str = "token_logps") -> Any:
        import torch

        from actors.model_io import policy_output

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            return policy_output(self.model, {k: v.to(device) for k, v in batch.items()}, output).cpu()


class _LocalSession:
    """The two calls ``preference_accuracy`` makes on a training session, served by local models."""

    def __init__(self, model: Any, reference: Any = None) -> None:
        self.learners = _LocalModel(model)
        self.reference = _LocalModel(reference) if reference is not None else None

    def reference_logps(self, per_rank: list) -> list:
        if self.reference is None:
            raise ValueError("this implicit reward needs a reference model (--reference)")
        return [[self.reference.compute(per_rank[0][0], "token_logps")]]


def pair_accuracy(model: Any, objective_name: str, pairs: Sequence[dict], pad_id: int, reference: Any = None,
                  beta: float | None = None, batch_size: int = 16) -> dict[str, float]:
    """Preference accuracy of ``model`` on tokenized ``pairs`` with an objective's implicit reward.

    ``objective_name``: ``simpo`` (length-averaged log-prob), ``dpo`` (needs ``reference``) or
    ``rm`` (``model`` has a score head). Computed by ``rlhf.driver.evaluate.preference_accuracy``,
    the function training uses (ties count half). Returns ``accuracy``, ``margin``, ``pairs``.
    """
    from rlhf.driver.evaluate import preference_accuracy
    from rlhf.objectives import get

    objective = get(objective_name)
    overrides = {"beta": beta} if beta is not None and objective_name != "rm" else None
    params = objective.make_params(overrides)
    result = preference_accuracy(_LocalSession(model, reference), objective, params, list(pairs), pad_id,
                                 batch_size=batch_size)
    return {key.removeprefix("eval/"): float(value) for key, value in result.items()}


def _is_reward_model(path: str, trust_remote_code: bool = False) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels == 1


def evaluate_pairs(args: argparse.Namespace, rows: list[dict], report: dict[str, Any]) -> dict[str, Any]:
    """Preference accuracy on pair rows; fills and returns ``report``."""
    import torch

    from actors.model_io import load_model
    from rlhf.data import tokenize_pairs

    if args.reward_model:
        scorer_path, objective = _model_folder(args.reward_model, "reward model"), "rm"
        if not _is_reward_model(scorer_path, args.trust_remote_code):
            raise InputError(f"reward model {args.reward_model!r} is not a 1-label sequence classifier "
                             "(a folder saved by --algo rm)")
    elif args.model:
        scorer_path, objective = _model_folder(args.model, "model"), "dpo" if args.reference else "simpo"
    else:
        raise InputError("pairs need --model (implicit reward) or --reward-model")
    reference_path = _model_folder(args.reference, "reference") if args.reference else None
    tokenizer = _tokenizer(scorer_path, args.trust_remote_code)
    try:
        pairs, stats = tokenize_pairs(rows, tokenizer, max_length=args.max_length,
                                      max_prompt_length=args.max_prompt_length, policy="truncate", source=args.data)
    except ValueError as exc:
        raise InputError(_first_line(exc)) from None
    if not pairs:
        raise InputError(f"data {args.data!r}: no pair left after tokenization ({stats})")
    report["settings"].update({"scorer": objective, "scorer_path": scorer_path, "reference_path": reference_path})
    report["data"] = stats.as_dict()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report["settings"]["device"] = device
    started = time.perf_counter()
    trust = args.trust_remote_code
    model = load_model(scorer_path, score_head=objective == "rm", trust_remote_code=trust).to(device).eval()
    reference = (load_model(reference_path, score_head=False, trust_remote_code=trust).to(device).eval()
                 if reference_path else None)
    report["timing"]["load_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    report["metrics"] = pair_accuracy(model, objective, pairs, tokenizer.pad_token_id, reference, args.beta,
                                      args.batch_size)
    report["timing"]["score_s"] = round(time.perf_counter() - started, 3)
    return report


# ---- output --------------------------------------------------------------------------------


def format_table(report: Mapping[str, Any]) -> str:
    """A few lines: the settings that matter, then one metric per line."""
    s = report["settings"]
    head = f"model={s.get('model')}  data={s['data']}  kind={s['kind']}  rows={s['rows']}"
    if s["kind"] == "prompts":
        head += (f"  samples={s['samples']}  temperature={s['temperature']}  threshold={s['threshold']}"
                 f"  seed={s['seed']}")
    else:
        head += f"  scorer={s.get('scorer')}"
    lines = [head]
    for key, value in report.get("metrics", {}).items():
        if value is None:
            shown = "-"
        elif key in COUNTS:
            shown = str(int(value))
        else:
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<20} {shown:>10}")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the command line asks; returns the report (``settings``, ``metrics``, ...)."""
    _check_args(args)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    started = time.perf_counter()
    kind, rows = load_data(args.data, args.kind, args.limit, data_seed)
    report: dict[str, Any] = {
        "settings": {
            "model": args.model, "data": args.data, "kind": kind, "limit": args.limit, "rows": len(rows),
            "samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
            "max_tokens": args.max_tokens, "threshold": args.threshold, "seed": args.seed, "data_seed": data_seed,
            "reward_model": args.reward_model, "reference": args.reference, "beta": args.beta,
            "max_prompt_length": args.max_prompt_length, "max_length": args.max_length,
        },
        "timing": {},
    }
    if kind == "prompts":
        evaluate_prompts(args, rows, report)
    else:
        evaluate_pairs(args, rows, report)
    report["timing"]["wall_s"] = round(time.perf_counter() - started, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if args.output and not Path(args.output).expanduser().parent.is_dir():
        print(f"error: --output {args.output!r}: folder {str(Path(args.output).parent)!r} does not exist",
              file=sys.stderr)
        return 2
    try:
        report = run(args)
    except InputError as err:
        if os.environ.get("RLHF_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError, RuntimeError, TimeoutError) as err:
        if os.environ.get("RLHF_DEBUG"):
            raise
        print(f"error: {_first_line(err)}  (RLHF_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    print(format_table(report), flush=True)
    if args.output:
        Path(args.output).expanduser().write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
