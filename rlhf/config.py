"""Run configuration: frozen dataclasses, YAML files and ``a.b=c`` overrides, validated.

Precedence, lowest first: dataclass defaults < ``configs/<algo>.yaml`` (only when no ``--config``
is given) < ``--config FILE`` < ``--model/--data/--output-dir/--max-steps`` flags < ``key=value``
overrides. Nothing is overwritten silently later: every value a run used is written to
``<output_dir>/config.yaml``.

Unknown keys and bad values fail with one line naming the key (and the file), listing the
valid names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    """The policy model and how sequences are cut to size."""

    path: str = "default"  # "default" (embedded SmolLM2-135M-Instruct), "tiny", a folder, or a hub name
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_length: int = 256  # prompt + completion tokens
    max_prompt_length: int = 192
    truncation: Literal["truncate", "drop"] = "truncate"  # over-long rows: cut (prompt from the left) or drop
    lora_r: int = 0  # 0: full fine-tune
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Learner actors and the optimizer. Batch sizes count examples (pairs, rows or samples)."""

    num_learners: int = 1
    zero_stage: Literal[0, 1, 2, 3] = 0
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    max_grad_norm: float = 1.0
    micro_batch_size: int = 4  # offline: examples per rank per micro-batch (online: derived from the rollout size)
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps (online: rollout steps)
    epochs: int = 1  # online: passes over each rollout batch
    mini_batches: int = 1  # online: optimizer steps per pass over a rollout batch
    seed: int = 0
    adam_betas: tuple[float, ...] = (0.9, 0.95)  # AdamW (beta1, beta2)
    max_bad_steps: int = 3  # a NaN/Inf loss or gradient skips the step; this many in a row stop the run
    max_staleness: int = 0  # online: policy versions a rollout may lag (0: synchronous)
    is_cap: float = 2.0  # online, staleness > 0: truncated importance-sampling cap on pi_old / pi_behaviour
    num_cpus_per_actor: float | None = None  # None: this machine's cores / num_learners (torch threads follow it)

    @property
    def cpus_per_actor(self) -> float:
        if self.num_cpus_per_actor is not None:
            return self.num_cpus_per_actor
        import os

        return float(max(1, (os.cpu_count() or 1) // self.num_learners))

    @property
    def global_batch(self) -> int:
        return self.num_learners * self.micro_batch_size * self.grad_accum


@dataclass(frozen=True)
class DataConfig:
    """Training data. ``train``: "default" (built-in reasoning-gym task), "rg:TASK", or a JSONL/Parquet path."""

    train: str = "default"
    eval: str | None = None  # a file of held-out pairs; None: split eval_size rows off the train data
    eval_size: int = 64
    size: int = 512  # rows generated for built-in tasks
    task: str = "chain_sum"


@dataclass(frozen=True)
class ReferenceConfig:
    """The frozen reference policy, started only when an objective needs it."""

    colocated: bool = False  # True: the learner holds the frozen copy; False: a separate actor


@dataclass(frozen=True)
class GeneratorConfig:
    """vLLM generator actors (online stages only)."""

    num_engines: int = 1
    prompts_per_step: int = 8
    n: int = 4  # samples per prompt (the group of GRPO / RLOO)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 32
    max_model_len: int = 512
    kv_cache_mb: int = 256
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    sync: Literal["broadcast", "object_store"] = "broadcast"
    bucket_mb: int = 64
    max_restarts: int = 2  # a generator actor that dies is restarted this many times per run
    truncated: Literal["keep", "drop", "penalise"] = "keep"  # completions cut at max_tokens
    truncated_penalty: float = 0.0  # reward given to a truncated completion with truncated=penalise


@dataclass(frozen=True)
class RewardConfig:
    """Reward functions (built-in names or ``module:function``) and an optional reward model."""

    functions: tuple[Any, ...] = ("reasoning_gym",)
    model: str | None = None  # folder saved by --algo rm, served by a reward actor
    model_weight: float = 1.0
    on_error: Literal["raise", "skip"] = "raise"
    timeout_s: float = 30.0  # per-sample time limit of a reward function (raised or skipped per on_error)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of the whole run state under ``<output_dir>/checkpoints/step-N/``."""

    every: int = 0  # optimizer/rollout steps between checkpoints; 0: only at stage boundaries and the end
    keep: int = 2  # newest complete checkpoints kept


@dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides ``metrics.jsonl``: TensorBoard (default) and Weights & Biases."""

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rlhf"
    wandb_run_name: str | None = None
    wandb_mode: Literal["online", "offline"] = "offline"  # offline: nothing leaves the machine


@dataclass(frozen=True)
class RunConfig:
    """One run. ``stages`` turns it into a schedule; otherwise ``algo`` is a one-stage schedule."""

    algo: str = "simpo"
    objective: dict[str, Any] = field(default_factory=dict)  # the objective's params (see --list-params)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stages: tuple[Any, ...] = ()  # [{algo, steps, objective: {...}, train: {...}, ...}, ...]
    output_dir: str | None = None  # default: runs/<algo>
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray_address: str | None = None  # None: a private local cluster; "auto" or an address: join that cluster
    timeout_s: float = 600.0  # every remote call and collective
    eval_every: int = 0  # 0: evaluate before and after only
    progress: bool = True


class ConfigError(ValueError):
    """A bad configuration key or value (message is one line)."""


def _hint(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} has the wrong type (expected {hint})")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (str, float) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys fail with the valid names."""
    hints = _hint(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values = {k: _check_value(v, hints[k], f"{where}.{k}" if where != "config" else k) for k, v in data.items()}
    return cls(**values)


def to_dict(cfg: Any) -> Any:
    """A plain (YAML-ready) copy of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML fails naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value  # "1e-5": YAML 1.1 keeps a string
        except ValueError:
            pass
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def build_config(
    algo: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Assemble and validate a ``RunConfig`` from the sources in precedence order (module doc)."""
    data: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        sources.append((str(config_file), load_yaml(config_file)))
    elif algo and (CONFIG_DIR / f"{algo}.yaml").is_file():
        sources.append((str(CONFIG_DIR / f"{algo}.yaml"), load_yaml(CONFIG_DIR / f"{algo}.yaml")))
    if algo:
        sources.append(("--algo", {"algo": algo}))
    if flags:
        sources.append(("flags", flags))
    for text in overrides or []:
        sources.append((f"override {text!r}", parse_override(text)))
    for where, update in sources:
        if isinstance(update.get("reward"), (str, list)):  # reward=module:function (or a list): the functions
            update = {**update, "reward": {"functions": update["reward"]}}
        data = merge(data, update)
        try:
            from_dict(RunConfig, data)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks, with the reason in the message."""
    from rlhf.objectives import get

    objective = get(cfg.algo)
    objective.make_params(cfg.objective)
    t = cfg.train
    for name in ("num_learners", "micro_batch_size", "grad_accum", "max_steps", "epochs", "mini_batches"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if cfg.model.dtype == "bfloat16" and t.zero_stage == 0:
        raise ConfigError("model.dtype=bfloat16 needs train.zero_stage >= 1 (stage 0 keeps no fp32 master weights)")
    if cfg.model.max_prompt_length >= cfg.model.max_length:
        raise ConfigError("model.max_prompt_length must be smaller than model.max_length")
    if objective.mode == "online":
        from rlhf.rewards.registry import load_rewards

        if cfg.reward.functions:
            load_rewards(list(cfg.reward.functions))
        elif not cfg.reward.model:
            raise ConfigError("online objectives need reward.functions or reward.model")
        g = cfg.generator
        samples = g.prompts_per_step * g.n
        per_update = samples // t.mini_batches
        if samples % t.mini_batches or per_update % (t.num_learners * t.grad_accum):
            raise ConfigError(
                f"generator.prompts_per_step * generator.n = {samples} samples must split into train.mini_batches="
                f"{t.mini_batches} x train.num_learners={t.num_learners} x train.grad_accum={t.grad_accum}"
            )
    for i, stage in enumerate(cfg.stages):
        if not isinstance(stage, dict) or "algo" not in stage:
            raise ConfigError(f"stages[{i}]: each stage is a mapping with at least 'algo' (and 'steps')")


def objective_params(cfg: RunConfig) -> Any:
    """The validated params dataclass of ``cfg.algo``."""
    from rlhf.objectives import get

    return get(cfg.algo).make_params(cfg.objective)


def output_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir or f"runs/{cfg.algo}")


def dump(cfg: RunConfig, path: str | Path) -> None:
    """Write every value the run uses to ``path`` (YAML)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
