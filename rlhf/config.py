"""Run configuration: frozen dataclasses, YAML files and ``a.b=c`` overrides, validated.

Precedence, lowest first: dataclass defaults < ``configs/<algo>.yaml`` (only when no ``--config``
is given) < ``--config FILE`` < ``--model/--data/--output-dir/--max-steps`` flags < ``key=value``
overrides. Nothing is overwritten silently later: every value a run used is written to
``<output_dir>/config.yaml``.

Unknown keys and bad values fail with one line naming the key (and the file), listing the
valid names and suggesting the closest one. Validating runs no code named by the config: a reward
given as ``module:function`` is only looked up on ``sys.path`` here; ``rlhf.run`` imports it
when the run starts, before any actor.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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
    trust_remote_code: bool = False  # run Python code shipped with a model folder or hub repo (opt-in)


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
    pack: bool = True  # rows that share a prompt (a pair, an online group) run it once (rlhf.packing)
    max_bad_steps: int = 3  # a NaN/Inf loss or gradient skips the step; this many in a row stop the run
    # online: policy versions a rollout may lag (0: synchronous; 1: the next step generates while this one trains,
    # a gain only where the roles do not share cores: 1.00x the step time on a 2-core CPU, bench/staleness_ab.py)
    max_staleness: int = 0
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
    split: str = "train"  # hub data sets: the split to read (a local file is one split)
    subset: str | None = None  # hub data sets: the configuration (subset) name
    columns: dict[str, str] = field(default_factory=dict)  # {prompt: question, ...}: read column -> as field


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
    sync: Literal["auto", "shared_memory", "broadcast", "object_store"] = "auto"  # auto: shared memory on one node
    bucket_mb: int = 64
    max_restarts: int = 2  # a generator actor that dies is restarted this many times per run
    truncated: Literal["keep", "drop", "penalise"] = "keep"  # completions cut at max_tokens
    truncated_penalty: float = 0.0  # reward given to a truncated completion with truncated=penalise
    # an engine and a learner on one GPU take turns (rlhf.driver.fit.takes_turns): vLLM sleeps while the learner
    # trains, the learner's optimizer state waits in host memory while vLLM generates. auto: on with CUDA when
    # both ask for a fraction of a GPU and generation does not run ahead (train.max_staleness=0); always; never
    sleep: Literal["auto", "always", "never"] = "auto"


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
class RoleClusterConfig:
    """Where the actors of one role run (``actors.placement``). Each actor is one placement-group bundle."""

    num_gpus: float | None = None  # per actor; None: 1 on cuda (engine: tensor_parallel_size), 0 on cpu; 0.5: half
    num_cpus: float | None = None  # per actor; None: train.cpus_per_actor (generators: cores // num_engines)
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per actor, e.g. {node_a: 1}
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # how the role's bundles spread


@dataclass(frozen=True)
class ClusterConfig:
    """Resources and placement of each role's actors on the Ray cluster."""

    learner: RoleClusterConfig = field(default_factory=RoleClusterConfig)
    generator: RoleClusterConfig = field(default_factory=RoleClusterConfig)
    reference: RoleClusterConfig = field(default_factory=RoleClusterConfig)
    reward_model: RoleClusterConfig = field(default_factory=RoleClusterConfig)
    timeout_s: float | None = None  # wait for a role's resources at most this long; None: the run's timeout_s
    # move the model to the actors and outputs back through Ray (actors.files): auto - when an actor runs on
    # another node than the driver; always - every actor (tests the path on one machine); never - shared files
    ship_files: Literal["auto", "always", "never"] = "auto"
    # CPU: the actors' glibc malloc keeps freed memory for reuse (rlhf.driver.session.REUSE_FREED_MEMORY)
    # instead of unmapping each step's large tensors and faulting fresh pages in the next step
    reuse_freed_memory: bool = True


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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    stages: tuple[Any, ...] = ()  # [{algo, steps, objective: {...}, train: {...}, ...}, ...]
    output_dir: str | None = None  # default: runs/<algo>
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray_address: str | None = None  # None: a private local cluster; "auto" or an address: join that cluster
    timeout_s: float = 600.0  # every remote call and collective
    eval_every: int = 0  # 0: evaluate before and after only
    progress: bool = True


class ConfigError(ValueError):
    """A bad configuration key or value (message is one line)."""


def did_you_mean(word: Any, choices: typing.Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` naming the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is float and isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{where}: expected a number, got nan")
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float and not isinstance(value, float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys fail with the valid names."""
    hints = _hint(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        named = ", ".join(f"{k}{did_you_mean(k, valid)}" for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {named}; valid: {', '.join(valid)}")
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
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not valid UTF-8 (byte 0x{err.object[err.start]:02x})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: config keys must be strings, got {bad[0]!r}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`` at line L, column C: problem`` from a YAML error (1-based), on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {' '.join(str(problem).split())}"


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML{_yaml_problem(err)}") from None
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


# (key, check, what a valid value is): plain range checks of single keys; None values are not checked
_finite = math.isfinite
RANGES: tuple[tuple[str, Any, str], ...] = (
    ("model.max_prompt_length", lambda v: v >= 1, ">= 1"),
    ("model.lora_r", lambda v: v >= 0, ">= 0 (0: full fine-tune)"),
    ("model.lora_alpha", lambda v: v > 0, "> 0"),
    ("model.lora_dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("train.lr", lambda v: _finite(v) and v >= 0.0, "a finite number >= 0"),
    ("train.weight_decay", lambda v: _finite(v) and v >= 0.0, "a finite number >= 0"),
    ("train.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.min_lr_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("train.max_grad_norm", lambda v: _finite(v) and v >= 0.0, "a finite number >= 0 (0: no clipping)"),
    ("train.adam_betas", lambda v: len(v) == 2 and all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in v),
     "two numbers in [0, 1), e.g. [0.9, 0.95]"),
    ("train.max_bad_steps", lambda v: v >= 1, ">= 1"),
    ("train.max_staleness", lambda v: v >= 0, ">= 0"),
    ("train.is_cap", lambda v: v >= 1.0, ">= 1"),
    ("train.num_cpus_per_actor", lambda v: v > 0, "> 0"),
    ("data.eval_size", lambda v: v >= 0, ">= 0"),
    ("data.size", lambda v: v >= 1, ">= 1"),
    ("generator.num_engines", lambda v: v >= 1, ">= 1"),
    ("generator.prompts_per_step", lambda v: v >= 1, ">= 1"),
    ("generator.n", lambda v: v >= 1, ">= 1"),
    ("generator.temperature", lambda v: _finite(v) and v >= 0.0, "a finite number >= 0 (0: greedy)"),
    ("generator.top_p", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("generator.top_k", lambda v: v >= -1, "-1 or 0 (off), or >= 1"),
    ("generator.max_tokens", lambda v: v >= 1, ">= 1"),
    ("generator.max_model_len", lambda v: v >= 2, ">= 2"),
    ("generator.kv_cache_mb", lambda v: v >= 1, ">= 1"),
    ("generator.tensor_parallel_size", lambda v: v >= 1, ">= 1"),
    ("generator.gpu_memory_utilization", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("generator.bucket_mb", lambda v: v >= 1, ">= 1"),
    ("generator.max_restarts", lambda v: v >= 0, ">= 0"),
    ("generator.truncated_penalty", _finite, "a finite number"),
    ("reward.model_weight", _finite, "a finite number"),
    ("reward.timeout_s", lambda v: _finite(v) and v > 0.0, "a finite number of seconds > 0"),
    ("checkpoint.every", lambda v: v >= 0, ">= 0 (0: at stage boundaries and the end only)"),
    ("checkpoint.keep", lambda v: v >= 1, ">= 1"),
    ("timeout_s", lambda v: _finite(v) and v > 0.0, "a finite number of seconds > 0"),
    ("eval_every", lambda v: v >= 0, ">= 0 (0: before and after only)"),
    ("cluster.timeout_s", lambda v: _finite(v) and v > 0.0, "a finite number of seconds > 0"),
)


def _gpus_ok(v: float) -> bool:
    return _finite(v) and v >= 0.0 and (v <= 1.0 or float(v).is_integer())


def _resources_ok(v: dict[str, Any]) -> bool:
    return all(isinstance(k, str) and k not in ("CPU", "GPU") and isinstance(x, int | float)
               and not isinstance(x, bool) and _finite(x) and x >= 0 for k, x in v.items())


RANGES += tuple(
    check
    for role in ("learner", "generator", "reference", "reward_model")
    for check in (
        (f"cluster.{role}.num_cpus", lambda v: _finite(v) and v >= 0.0, "a finite number >= 0"),
        (f"cluster.{role}.num_gpus", _gpus_ok, "a fraction of one GPU (e.g. 0.5) or a whole number of GPUs"),
        (f"cluster.{role}.resources", _resources_ok,
         "a mapping of custom resource names to numbers >= 0, e.g. {node_a: 1} (CPU, GPU: num_cpus / num_gpus)"),
    )
)


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks, with the reason in the message. Imports nothing the config names."""
    from rlhf.objectives import get, names

    if cfg.algo not in names():
        raise ConfigError(f"algo: unknown algorithm {cfg.algo!r}{did_you_mean(cfg.algo, names())}; "
                          f"valid: {', '.join(sorted(names()))}")
    objective = get(cfg.algo)
    valid_params = [f.name for f in dataclasses.fields(objective.params)]
    unknown = sorted(set(cfg.objective) - set(valid_params), key=str)
    if unknown:
        named = ", ".join(f"{k}{did_you_mean(k, valid_params)}" for k in unknown)
        raise ConfigError(
            f"objective: unknown {cfg.algo} parameter(s) {named}; valid: {', '.join(sorted(valid_params))}"
        )
    try:
        params = objective.make_params(cfg.objective)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"objective ({cfg.algo}): {_one_line(err)}") from None
    t = cfg.train
    for name in ("num_learners", "micro_batch_size", "grad_accum", "max_steps", "epochs", "mini_batches"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    for key, ok, valid in RANGES:
        value = _value(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key} must be {valid}, got {value!r}")
    if cfg.model.dtype == "bfloat16" and t.zero_stage == 0:
        raise ConfigError("model.dtype=bfloat16 needs train.zero_stage >= 1 (stage 0 keeps no fp32 master weights)")
    if cfg.model.max_prompt_length >= cfg.model.max_length:
        raise ConfigError(
            f"model.max_prompt_length ({cfg.model.max_prompt_length}) must be smaller than model.max_length "
            f"({cfg.model.max_length}) to leave room for a completion"
        )
    _check_paths(cfg)
    if objective.mode == "online":
        _validate_online(cfg, objective, params)
    for i, stage in enumerate(cfg.stages):
        if not isinstance(stage, dict) or "algo" not in stage:
            raise ConfigError(f"stages[{i}]: each stage is a mapping with at least 'algo' (and 'steps')")


def _one_line(err: BaseException) -> str:
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_paths(cfg: RunConfig) -> None:
    """Model and data paths that cannot exist fail here, before anything is loaded or started."""
    from rlhf.data.loaders import check_data_spec
    from rlhf.models import check_model_name

    try:
        check_model_name(cfg.model.path, cfg.model.trust_remote_code)
    except ConfigError as err:
        raise ConfigError(f"model.path: {err}") from None
    if cfg.reward.model:
        try:
            check_model_name(cfg.reward.model, cfg.model.trust_remote_code)
        except ConfigError as err:
            raise ConfigError(f"reward.model: {err}") from None
    for key in ("train", "eval"):
        spec = getattr(cfg.data, key)
        if spec is not None:
            try:
                check_data_spec(spec)
            except ValueError as err:
                raise ConfigError(f"data.{key}: {err}") from None


def _validate_online(cfg: RunConfig, objective: Any, params: Any) -> None:
    from rlhf.rewards.registry import check_spec

    t, g = cfg.train, cfg.generator
    if cfg.reward.functions:
        try:
            check_spec(list(cfg.reward.functions))  # looks modules up on sys.path; imports nothing
        except ValueError as err:
            raise ConfigError(f"reward.functions: {err}") from None
    elif not cfg.reward.model:
        raise ConfigError("online objectives need reward.functions or reward.model")
    if g.n < 2 and _needs_group(objective, params):
        raise ConfigError(
            f"generator.n={g.n}: {cfg.algo} compares each sample's reward with the other samples of the same "
            "prompt (a group baseline), which is undefined for a group of one (every advantage would be 0); "
            "set generator.n >= 2"
        )
    if g.sleep == "always" and cfg.device == "cpu":
        raise ConfigError("generator.sleep=always needs device=cuda: vLLM's sleep mode frees GPU memory "
                          "(set it to never)")
    if g.sleep == "always" and t.max_staleness > 0:
        raise ConfigError(
            f"generator.sleep=always needs train.max_staleness=0: with {t.max_staleness} the engine generates while "
            "the learner trains, so they cannot take turns on the GPU")
    if cfg.model.max_prompt_length + g.max_tokens > g.max_model_len:
        raise ConfigError(
            f"model.max_prompt_length ({cfg.model.max_prompt_length}) + generator.max_tokens ({g.max_tokens}) must "
            f"fit generator.max_model_len ({g.max_model_len})"
        )
    samples = g.prompts_per_step * g.n
    per_update = samples // t.mini_batches
    if samples % t.mini_batches or per_update % (t.num_learners * t.grad_accum):
        raise ConfigError(
            f"generator.prompts_per_step * generator.n = {samples} samples must split into train.mini_batches="
            f"{t.mini_batches} x train.num_learners={t.num_learners} x train.grad_accum={t.grad_accum}"
        )


def _needs_group(objective: Any, params: Any) -> bool:
    """Whether ``objective``'s advantages need a group of several samples per prompt.

    Read from the objective's record (``min_group``) when it declares one; otherwise probed: its
    ``prepare`` gets two samples with different rewards, each alone in its group, and a group
    baseline shows as all-zero advantages (GRPO, RLOO and REINFORCE++-baseline; plain REINFORCE++
    still sees the difference).
    """
    declared = getattr(objective, "min_group", None)
    if declared is not None:
        return int(declared) > 1
    if objective.prepare is None:
        return False
    import torch

    ones = torch.ones(2, 3)
    batch = {"rewards": torch.tensor([0.0, 1.0]), "group": torch.tensor([0, 1]), "response_mask": ones,
             "input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": ones,
             "old_logps": -ones, "ref_token_logps": -ones, "behaviour_logps": -ones}
    try:
        out = objective.prepare(batch, params)
    except Exception:  # noqa: BLE001 - a prepare that needs more than this probe gives: assume no group
        return False
    advantages = out.get("advantages") if isinstance(out, dict) else None
    return advantages is not None and bool(torch.all(advantages == 0))


def objective_params(cfg: RunConfig) -> Any:
    """The validated params dataclass of ``cfg.algo``."""
    from rlhf.objectives import get

    return get(cfg.algo).make_params(cfg.objective)


def output_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir or f"runs/{cfg.algo}")


def dump(cfg: RunConfig, path: str | Path) -> None:
    """Write every value the run uses to ``path`` (YAML)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
