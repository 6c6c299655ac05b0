"""The live actors of one run, shared by all its stages.

This is the only module of ``rlhf`` that reaches ``actors`` (and so ray, deepspeed, vllm), and
it does so lazily, inside methods. Learners start with the first stage and live until the
run ends; a reference actor and the generators start the first time a stage needs them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from rlhf.config import RunConfig

log = logging.getLogger("rlhf")

# Settings that shape the learner actors; stages share live learners, so these must not change.
LEARNER_SHAPE = ("model.path", "model.dtype", "model.lora_r", "model.lora_alpha", "model.lora_dropout",
                 "model.gradient_checkpointing", "train.num_learners", "train.zero_stage", "train.num_cpus_per_actor",
                 "train.grad_accum", "train.max_grad_norm", "train.weight_decay", "train.seed")


def resolve_device(cfg: RunConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_environment(device: str) -> None:
    """Process-wide settings every actor inherits (through Ray's runtime env)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def learner_config(cfg: RunConfig, model_path: str, device: str, total_steps: int, score_head: bool) -> dict[str, Any]:
    """The plain dict ``actors.learner.LearnerActor`` takes."""
    m, t = cfg.model, cfg.train
    return {
        "model_path": model_path,
        "dtype": m.dtype,
        "device": device,
        "zero_stage": t.zero_stage,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "warmup_steps": t.warmup_steps,
        "total_steps": total_steps,
        "min_lr_ratio": t.min_lr_ratio,
        "max_grad_norm": t.max_grad_norm,
        "micro_batch_size": t.micro_batch_size,
        "grad_accum": t.grad_accum,
        "lora_r": m.lora_r,
        "lora_alpha": m.lora_alpha,
        "lora_dropout": m.lora_dropout,
        "score_head": score_head,
        "seed": t.seed,
        "timeout_s": cfg.timeout_s,
        "gradient_checkpointing": m.gradient_checkpointing,
        "reference_colocated": cfg.reference.colocated,
        "adam_betas": tuple(t.adam_betas),
        "pack": t.pack,
    }


def generator_config(cfg: RunConfig, model_path: str, device: str) -> dict[str, Any]:
    """The plain dict ``actors.generator.GeneratorActor`` takes."""
    g = cfg.generator
    return {
        "model_path": model_path,
        "dtype": cfg.model.dtype,
        "device": device,
        "max_model_len": g.max_model_len,
        "kv_cache_bytes": g.kv_cache_mb * 2**20,
        "seed": cfg.train.seed,
        "tensor_parallel_size": g.tensor_parallel_size,
        "enforce_eager": g.enforce_eager,
        "gpu_memory_utilization": g.gpu_memory_utilization,
        "max_num_batched_tokens": max(g.max_model_len, 2048),
    }


class Session:
    """Ray, the learner group, and (lazily) the reference actor and the generators."""

    def __init__(self, cfg: RunConfig, model_path: str, total_steps: int, score_head: bool) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        self.model_path = model_path
        self.total_steps = total_steps
        self.score_head = score_head
        self.learners = None
        self.reference = None
        self.generators: list[Any] = []
        self.transport = None
        self.reward_model = None
        self.version = 0  # policy version: optimizer steps taken so far
        self.steps = 0  # steps run so far, all stages (a skipped step counts here, not in version)
        self.synced_version = -1  # version the generators hold
        self._pending_generators: list[Any] = []
        prepare_environment(self.device)
        self._start_ray()

    # -- Ray -----------------------------------------------------------------------------------
    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE",
                                           "TOKENIZERS_PARALLELISM", "RLHF_CACHE") if k in os.environ}
        runtime_env = {"env_vars": env}
        if self.cfg.ray_address:
            ray.init(address=self.cfg.ray_address, runtime_env=runtime_env, log_to_driver=True)
        else:
            cpus = max(4 * (os.cpu_count() or 1), 16)  # logical CPUs: stages alternate, actors mostly wait
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=False)

    # -- actors --------------------------------------------------------------------------------
    def start_learners(self, prestart_generators: bool = False, prestart_reference: bool = False) -> None:
        """Start the learner ranks; the generators' and the reference's construction (model loads,
        vLLM engine start) is launched first when asked, so all of them start in parallel."""
        from actors.learner_group import LearnerGroup

        if self.learners is not None:
            return
        if prestart_generators:
            self._launch_generators()
        if prestart_reference:
            self._launch_reference()
        config = learner_config(self.cfg, self.model_path, self.device, self.total_steps, self.score_head)
        self.learners = LearnerGroup.start(self.cfg.train.num_learners, config, timeout_s=self.cfg.timeout_s,
                                           num_cpus=self.cfg.train.cpus_per_actor)

    def _launch_reference(self) -> None:
        if self.cfg.reference.colocated or self.reference is not None:
            return
        import ray

        from actors.reference import ReferenceActor

        config = learner_config(self.cfg, self.model_path, self.device, self.total_steps, self.score_head)
        remote = ray.remote(ReferenceActor).options(
            num_cpus=self.cfg.train.cpus_per_actor, num_gpus=1.0 if self.device == "cuda" else 0.0,
            name=None)
        self.reference = remote.remote(config)

    def start_reference(self) -> None:
        """A frozen copy of the initial model: co-located in the learners or its own actor."""
        if self.cfg.reference.colocated:
            return
        self._launch_reference()
        self._get(self.reference.info.remote(), "ReferenceActor", "start")

    def reference_logps(self, per_rank: list[list[dict[str, torch.Tensor]]]) -> list[list[torch.Tensor]]:
        """Reference token log-probs of every micro-batch (same nesting as ``per_rank``)."""
        if self.cfg.reference.colocated:  # each rank's frozen copy, rows split over the ranks
            return [[self.learners.compute(mb, "token_logps", method="compute_reference") for mb in mbs]
                    for mbs in per_rank]
        refs = [[self.reference.compute.remote(mb, "token_logps") for mb in mbs] for mbs in per_rank]
        return [[self._get(r, "ReferenceActor", "compute") for r in row] for row in refs]

    def _launch_generators(self) -> None:
        if self.generators or self._pending_generators:
            return
        import ray

        from actors.generator import GeneratorActor

        g = self.cfg.generator
        config = generator_config(self.cfg, self.model_path, self.device)
        gpus = float(g.tensor_parallel_size) if self.device == "cuda" else 0.0
        cpus = float(max(1, (os.cpu_count() or 1) // g.num_engines))  # generation and training alternate
        remote = ray.remote(GeneratorActor).options(num_cpus=cpus, num_gpus=gpus)
        self._pending_generators = [remote.remote(i, config) for i in range(g.num_engines)]

    def start_generators(self) -> None:
        """K vLLM engines, each in its own actor, and the weight transport to them."""
        if self.generators:
            return
        from actors.weight_sync import make_transport

        g = self.cfg.generator
        self._launch_generators()
        self.generators, self._pending_generators = self._pending_generators, []
        for i, handle in enumerate(self.generators):
            self._get(handle.ping.remote(), f"GeneratorActor[{i}]", "start")
        self.transport = make_transport(g.sync, bucket_mb=g.bucket_mb, timeout_s=self.cfg.timeout_s,
                                        device=self.device)
        self.transport.setup(self.learners, self.generators)
        self.synced_version = -1

    def sync_weights(self) -> dict[str, float]:
        """Send the learner's weights to every generator; returns seconds and bytes."""
        stats = self.transport.sync(self.version)
        self.synced_version = self.version
        return {"sync/seconds": float(stats.seconds), "sync/bytes": float(stats.bytes)}

    def generate(self, prompts: list[list[int]], sampling: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Shard ``prompts`` over the engines (contiguous slices); samples in prompt order."""
        k = len(self.generators)
        size = -(-len(prompts) // k)
        parts = [(i, prompts[i * size : (i + 1) * size]) for i in range(k) if prompts[i * size : (i + 1) * size]]
        refs = [(i, self.generators[i].generate.remote(p, sampling)) for i, p in parts]
        out: list[list[dict[str, Any]]] = []
        for i, ref in refs:
            out.extend(self._get(ref, f"GeneratorActor[{i}]", "generate"))
        return out

    def start_reward_model(self, path: str) -> Any:
        """A reward model trained by --algo rm, served by its own actor."""
        import ray

        from actors.reward_model import RewardModelActor

        remote = ray.remote(RewardModelActor).options(num_cpus=self.cfg.train.cpus_per_actor,
                                                      num_gpus=1.0 if self.device == "cuda" else 0.0)
        self.reward_model = remote.remote({"model_path": path, "dtype": self.cfg.model.dtype, "device": self.device})
        return self.reward_model

    def _get(self, ref: Any, actor: str, method: str) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=self.cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{actor}.{method} did not answer within {self.cfg.timeout_s:.0f} s") from None

    def started_actors(self) -> dict[str, int]:
        """How many actors of each role this run started."""
        return {"learners": len(self.learners) if self.learners is not None else 0,
                "reference": int(self.reference is not None), "generators": len(self.generators),
                "reward_model": int(self.reward_model is not None)}

    def close(self) -> None:
        import ray

        if self.transport is not None:
            self.transport.close()
        for handle in [self.reference, self.reward_model, *self.generators, *self._pending_generators]:
            if handle is not None:
                ray.kill(handle)
        if self.learners is not None:
            self.learners.shutdown()
        if ray.is_initialized() and not self.cfg.ray_address:
            ray.shutdown()


def check_same_learners(first: RunConfig, stage: RunConfig, stage_name: str) -> None:
    """Stages share live learners: refuse a stage that changes what shapes them."""
    from rlhf.config import ConfigError, to_dict

    a, b = to_dict(first), to_dict(stage)
    for key in LEARNER_SHAPE:
        x, y = a, b
        for part in key.split("."):
            x, y = x[part], y[part]
        if x != y:
            raise ConfigError(
                f"stage {stage_name} changes {key} ({x!r} -> {y!r}); stages share the live learner actors"
            )
