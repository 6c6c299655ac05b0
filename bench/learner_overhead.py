"""The learner's hot path against a plain PyTorch loop, one rank, the same micro-batches.

    python bench/learner_overhead.py --steps 6 [--model default] [--pairs 4]
    python bench/learner_overhead.py --device cuda --dtype bfloat16 --pairs 32 --profile   # on a GPU
    python bench/learner_overhead.py --device cuda --dtype bfloat16 --pairs 32 --nopack --profile \
        --model /tmp/gpucheck-model --data .gpu-check/data/pairs.jsonl --max-length 256   # beside the GPU check

Times one optimizer step of SimPO on the same pairs four ways, in this one process (world size
1), alternating them step by step, the first step of each excluded (CPU and fp32 by default;
``--device cuda --dtype bfloat16`` on a GPU, where stage 0 is left out):

- ``plain``: what a hand-written loop does: HF forward over every position, full-vocabulary
  log-softmax, SimPO loss, backward, clip, torch AdamW.
- ``project-zero0`` / ``-zero1`` / ``-zero2``: the learner's own path (completion-only output
  head, shared-prefix packing) under a DeepSpeed engine at that ZeRO stage, fused AdamW.
- ``project-zeroN-nopack`` (with ``--nopack``): the same without packing (padded rows, a plain
  causal mask: on a GPU the attention kernels a 4D packing mask rules out stay available).
- ``learner-zeroN`` (the first stage): ``actors.learner.LearnerActor.train_step`` itself, in this
  process: everything one step of the learner does besides the model (moving the batch to the
  device, the finiteness checks, the metrics and their all-reduce).

Prints min / median seconds per step and each one's ratio to ``plain``, plus a torch.profiler
table of the top operators of one ``project-zero0`` step. On CUDA it also counts, for one more
step of each path, the operations that made the host wait for the GPU
(``torch.cuda.set_sync_debug_mode``), with the lines of Python that called them most often.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--data", default="rg:chain_sum",
                   help="pairs: rg:TASK or a JSONL file of {prompt, chosen, rejected}")
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--nopack", action="store_true", help="also time each project path without packing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: the project runs DeepSpeed bf16 (ZeRO >= 1), plain runs bf16 autocast")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("DS_ACCELERATOR", a.device)

    from transformers import AutoModelForCausalLM

    from actors import common, model_io
    from rlhf import data as rdata
    from rlhf.batch import collate_pairs, global_counts
    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.objectives import get

    path = resolve_model(a.model)
    tok = load_tokenizer(path)
    rows = rdata.load_dataset_spec(a.data, "pairs", seed=0, n=a.pairs * 4)
    examples, _ = rdata.tokenize_pairs(rows, tok, max_length=a.max_length, max_prompt_length=a.max_length * 3 // 4)
    device = common.local_device(a.device)
    batch = common.to_device(collate_pairs(examples[: a.pairs], tok.pad_token_id), device)
    bf16 = a.dtype == "bfloat16"
    counts = global_counts("pairs", examples[: a.pairs])
    simpo = get("simpo")
    params = simpo.make_params({"beta": 2.0, "gamma_beta_ratio": 0.5})
    real = int(batch["attention_mask"].sum())
    print(f"{a.pairs} pairs: {tuple(batch['input_ids'].shape)} padded, {real} real tokens, "
          f"{int(batch['response_mask'].sum())} completion tokens; {a.threads} threads")

    common.init_process_group(0, 1, "127.0.0.1", _free_port(), a.device, 300)
    deepspeed = common.import_deepspeed(a.device)

    def plain_runner():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95))

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = model_io.token_logps(logits, batch["input_ids"], batch["attention_mask"])
            loss, _ = simpo.loss(logps, batch, params, counts)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def project_runner(stage: int, pack: bool = True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.use_cache = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), **common.adamw_kernel(a.device))
        cfg = {"bf16": {"enabled": bf16}, "train_micro_batch_size_per_gpu": a.pairs, "gradient_accumulation_steps": 1,
               "train_batch_size": a.pairs, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage},
               "zero_allow_untested_optimizer": True, "steps_per_print": 1 << 30}
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        engine.enable_backward_allreduce = stage > 0  # as the learner does at one rank, ZeRO-0

        def step():
            out = model_io.policy_output(engine, batch, "token_logps", pack=pack)
            loss, _ = simpo.loss(out, batch, params, counts)
            engine.backward(loss, scale_wrt_gas=False)
            engine.step()
        return step

    def learner_runner(stage: int):
        from actors.learner import LearnerActor

        learner = LearnerActor(0, 1, {"model_path": path, "dtype": a.dtype, "device": a.device, "zero_stage": stage,
                                      "lr": 1e-6, "adam_betas": (0.9, 0.95), "max_grad_norm": 1.0,
                                      "micro_batch_size": a.pairs, "timeout_s": 300})
        learner.setup("127.0.0.1", _free_port())  # the process group exists already: joined as is
        from rlhf.objectives import GlobalCounts

        host = collate_pairs(examples[: a.pairs], tok.pad_token_id)
        totals = GlobalCounts(examples=counts.examples, tokens=counts.tokens)
        return lambda: learner.train_step([host], simpo, params, totals)

    stages = (1, 2) if bf16 else (0, 1, 2)  # DeepSpeed bf16 keeps fp32 master weights from stage 1
    runners = {"plain": plain_runner(), **{f"project-zero{s}": project_runner(s) for s in stages}}
    if a.nopack:
        runners.update({f"project-zero{s}-nopack": project_runner(s, pack=False) for s in stages})
    runners[f"learner-zero{stages[0]}"] = learner_runner(stages[0])
    times: dict[str, list[float]] = {k: [] for k in runners}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(a.steps + 1):
        for name, step in runners.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"][1:])
    print(f"{'path':<24}{'min s':>8}{'median s':>10}{'plain / this':>14}")
    for name, values in times.items():
        values = values[1:]
        median = statistics.median(values)
        print(f"{name:<24}{min(values):>8.3f}{median:>10.3f}{base / median:>13.2f}x")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            runners[f"project-zero{stages[0]}"]()
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        if device.type == "cuda":
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    if device.type == "cuda":
        print(f"\n{'path':<24}{'host syncs':>11}  most frequent callers")
        for name, step in runners.items():
            sync()
            try:
                count, where = _host_syncs(step)
            except Exception as e:  # a diagnostic: report it, keep what was measured above
                print(f"{name:<24}{'?':>11}  {type(e).__name__}: {e}")
                continue
            sync()
            print(f"{name:<24}{count:>11}  " + ", ".join(f"{place} x{n}" for place, n in where))
    return 0


def _host_syncs(step, top: int = 6) -> tuple[int, list[tuple[str, int]]]:
    """Run ``step`` once under CUDA's sync debug mode: how many operations made the host wait for
    the GPU, and the ``top`` most frequent Python lines that called them (``file:line``)."""
    import collections
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places = collections.Counter(f"{_short(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return sum(places.values()), places.most_common(top)


def _short(path: str) -> str:
    """``path`` relative to the longest ``sys.path`` entry (or folder) holding it."""
    roots = sorted((os.path.abspath(x or ".") for x in sys.path), key=len, reverse=True)
    full = os.path.abspath(path)
    return next((os.path.relpath(full, r) for r in roots if full.startswith(r + os.sep)), path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
