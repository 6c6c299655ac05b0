"""The TRL side of ``bench/side_by_side.py``: one TRL 1.16 run in its own process, timed per step.

    python bench/trl_runner.py SPEC.json

``SPEC.json`` is written by ``side_by_side.py`` (every value is copied from the project's resolved
config of the run it is compared with)::

    {"algo": "simpo" | "grpo", "model": folder, "data": jsonl, "out": folder, "max_steps": int,
     "threads": int, "seed": int, "lr": float, "adam_betas": [b1, b2], "weight_decay": float,
     "max_grad_norm": float, "micro_batch_size": int, "grad_accum": int, "max_length": int,
     "objective": {...}, "generator": {...}}

SimPO is ``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no
NLL term); GRPO is ``trl.GRPOTrainer`` generating with transformers ``generate`` (``use_vllm=False``)
and scoring with the project's own reasoning-gym verifier function. Rows are consumed in file order
(``train_sampling_strategy="sequential"`` / ``shuffle_dataset=False``): the harness writes them in
the order the project consumes them, so every optimizer step sees the same examples.

Writes ``OUT/trl_steps.jsonl``: one record per optimizer step with the wall clock at
``on_step_end`` (``wall``, seconds since the epoch) and the step's phase seconds (``generate``: the
model's ``generate`` calls; ``reward``: the reward function; ``training_step``: the Trainer's
``training_step`` calls, which include generation and scoring in GRPO; ``optimizer``: from the
end of the last ``training_step`` to ``on_optimizer_step``, i.e. gradient clipping plus
``optimizer.step``), ``OUT/trl_logs.jsonl`` (what TRL logged) and ``OUT/trl_result.json`` (every
``TrainingArguments`` value, tokens per step, versions).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.time()


class PhaseClock:
    """Seconds spent in named phases since the last ``pop``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.last_training_step_end: float | None = None

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        timed.__name__ = getattr(fn, "__name__", name)
        return timed

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def timed_trainer(cls: type, clock: PhaseClock) -> type:
    """``cls`` with its ``training_step`` timed (forward + backward of one micro-batch)."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        def training_step(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().training_step(*args, **kwargs)
            finally:
                end = time.perf_counter()
                clock.add("training_step", end - start)
                clock.last_training_step_end = end

    Timed.__name__ = cls.__name__
    return Timed


def make_callback(clock: PhaseClock, out: Path):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Writes one line per optimizer step to ``trl_steps.jsonl`` and TRL's logs to ``trl_logs.jsonl``."""

        def __init__(self) -> None:
            self.steps = open(out / "trl_steps.jsonl", "w", buffering=1)  # noqa: SIM115
            self.logs = open(out / "trl_logs.jsonl", "w", buffering=1)  # noqa: SIM115

        def on_optimizer_step(self, args, state, control, **kwargs):
            if clock.last_training_step_end is not None:
                clock.add("optimizer", time.perf_counter() - clock.last_training_step_end)

        def on_step_end(self, args, state, control, **kwargs):
            record = {"step": state.global_step, "wall": time.time(), **clock.pop()}
            self.steps.write(json.dumps(record) + "\n")

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            self.steps.close()
            self.logs.close()

    return StepClock()


def common_args(spec: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments shared by both trainers, each set to the project run's value."""
    b1, b2 = spec["adam_betas"]
    return {
        "output_dir": str(Path(spec["out"]) / "trl"),
        "max_steps": spec["max_steps"],
        "per_device_train_batch_size": spec["micro_batch_size"],
        "gradient_accumulation_steps": spec["grad_accum"],
        "learning_rate": spec["lr"],
        "adam_beta1": b1,
        "adam_beta2": b2,
        "adam_epsilon": 1e-8,  # torch AdamW's default, which the project's learner uses
        "optim": "adamw_torch",
        "weight_decay": spec["weight_decay"],
        "max_grad_norm": spec["max_grad_norm"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "seed": spec["seed"],
        "data_seed": spec["seed"],
        "train_sampling_strategy": "sequential",
        "dataloader_num_workers": 0,
        "logging_steps": 1,
        "report_to": ["tensorboard"],  # the project logs every step to TensorBoard too
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": False,
    }


def load_rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_simpo(spec: dict[str, Any], model, tokenizer, clock: PhaseClock, callback) -> dict[str, Any]:
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    obj = spec["objective"]
    if obj["loss_type"] != "sigmoid":
        raise SystemExit(f"SimPO loss_type {obj['loss_type']!r}: only 'sigmoid' maps onto CPOTrainer's 'simpo' loss")
    args = CPOConfig(
        **common_args(spec),
        max_length=spec["max_length"],
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=obj["beta"],
        simpo_gamma=obj["beta"] * obj["gamma_beta_ratio"],  # TRL takes the absolute margin gamma
        label_smoothing=obj["label_smoothing"],
        remove_unused_columns=False,
    )
    dataset = Dataset.from_list(load_rows(spec["data"]))
    trainer = timed_trainer(CPOTrainer, clock)(model=model, args=args, train_dataset=dataset,
                                               processing_class=tokenizer, callbacks=[callback])
    rows = trainer.train_dataset
    lengths = []
    for i in range(len(rows)):
        row = rows[i]
        chosen = sum(1 for x in row["chosen_labels"] if x != -100)
        rejected = sum(1 for x in row["rejected_labels"] if x != -100)
        lengths.append({"prompt": len(row["chosen_input_ids"]) - chosen, "chosen": chosen, "rejected": rejected,
                        "tokens": len(row["chosen_input_ids"]) + rejected})  # prompt once per pair
    global_batch = spec["micro_batch_size"] * spec["grad_accum"]
    tokens_per_step = [sum(r["tokens"] for r in lengths[s * global_batch : (s + 1) * global_batch])
                       for s in range(spec["max_steps"])]
    first = {k: rows[0][k] for k in ("chosen_input_ids", "rejected_input_ids")}
    train_start = time.time()
    trainer.train()
    return {"args": args.to_dict(), "tokens_per_step": tokens_per_step, "row_lengths": lengths[:global_batch],
            "first_row": first, "train_start_wall": train_start}


def run_grpo(spec: dict[str, Any], model, tokenizer, clock: PhaseClock, callback) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.rewards.builtin import reasoning_gym

    obj, gen = spec["objective"], spec["generator"]
    samples = gen["prompts_per_step"] * gen["n"]
    loss_types = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
    if obj["loss_agg"] not in loss_types:
        raise SystemExit(f"loss_agg {obj['loss_agg']!r} has no TRL equivalent ({', '.join(loss_types)})")
    base = common_args(spec)
    base["per_device_train_batch_size"] = samples // spec["grad_accum"]
    args = GRPOConfig(
        **base,
        num_generations=gen["n"],
        max_completion_length=gen["max_tokens"],
        temperature=gen["temperature"],
        top_p=gen["top_p"],
        top_k=0 if gen["top_k"] in (-1, 0) else gen["top_k"],
        beta=obj["kl_coef"],
        epsilon=obj["clip_low"],
        epsilon_high=obj["clip_high"],
        loss_type=loss_types[obj["loss_agg"]],
        scale_rewards="group" if obj["norm_std"] else "none",
        num_iterations=spec["epochs"],
        shuffle_dataset=False,
        use_vllm=False,
    )

    def reasoning_gym_reward(prompts, completions, task, entry, answer, **_):
        start = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = [reasoning_gym(t, task=k, entry=e, answer=a) for t, k, e, a in zip(texts, task, entry, answer)]
        clock.add("reward", time.perf_counter() - start)
        return out

    model.generate = clock.wrap("generate", model.generate)
    dataset = Dataset.from_list(load_rows(spec["data"]))
    trainer = timed_trainer(GRPOTrainer, clock)(model=model, reward_funcs=[reasoning_gym_reward], args=args,
                                                train_dataset=dataset, processing_class=tokenizer,
                                                callbacks=[callback])
    train_start = time.time()
    trainer.train()
    return {"args": args.to_dict(), "train_start_wall": train_start}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPOTrainer lives in trl.experimental
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clock = PhaseClock()
    callback = make_callback(clock, out)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    runner = {"simpo": run_simpo, "grpo": run_grpo}[spec["algo"]]
    result = runner(spec, model, tokenizer, clock, callback)
    from importlib.metadata import version

    result.update(process_start_wall=PROCESS_START, end_wall=time.time(), torch_threads=torch.get_num_threads(),
                  versions={p: version(p) for p in ("trl", "transformers", "torch", "accelerate", "datasets")})
    (out / "trl_result.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
