"""The live actors of one run, shared by all its stages.

This is the only module of ``rlhf`` that reaches ``actors`` (and so ray, deepspeed, vllm), and
it does so lazily, inside methods. Learners start with the first stage and live until the
run ends; a reference actor and the generators start the first time a stage needs them.

Actor failures. A generator actor that dies (its process killed, out of memory) during a
generation or a weight sync is replaced by a new one with the same index and config, the
weight transport is formed again over every generator, the current weights are sent, and only
the dead engine's prompts are generated again: the step goes on. The reward model actor is
restarted the same way and the batch scored again (``actors.reward_model.RewardModelService``).
Both are bounded by ``generator.max_restarts`` per run (``restarts`` counts them; each restart
prints one ``warning:`` line). A learner that dies ends the run (``rlhf.run`` then names it and
the ``--resume`` command); a weight sync that fails because a learner died says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from rlhf.config import RunConfig

if TYPE_CHECKING:
    from actors.files import Shipping

log = logging.getLogger("rlhf")
PROBE_S = 15.0  # after a failed call: how long an actor gets to show it is alive

# Settings that shape the live actors (learners; generator.sleep: the engines' start-up); stages share them.
LEARNER_SHAPE = ("model.path", "model.dtype", "model.lora_r", "model.lora_alpha", "model.lora_dropout",
                 "model.gradient_checkpointing", "train.num_learners", "train.zero_stage", "train.num_cpus_per_actor",
                 "train.grad_accum", "train.max_grad_norm", "train.weight_decay", "train.seed", "cluster.learner",
                 "generator.sleep")


def resolve_device(cfg: RunConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_environment(device: str) -> None:
    """Process-wide settings every actor inherits (through Ray's runtime env)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A private local cluster's raylet starts workers at nice 15 by default: any other load on the
    # machine then slows the actors (the whole run) more than a trainer at nice 0. Run them at 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# glibc malloc serves every block over 128 KB-32 MB with its own mmap and unmaps it when freed, so on CPU
# each step's activations, gradients and ZeRO buckets land on freshly faulted, zeroed pages (0.6 GB a step
# at ZeRO-0 and 2 GB at ZeRO-2 for SmolLM2-135M). With these, freed blocks stay in the heap and the next
# step reuses them: 14% (ZeRO-0) to 31% (ZeRO-2) less time per learner step measured here, for more
# resident memory (the heap keeps its high-water mark). Actors only (Ray's runtime env), CPU only.
REUSE_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}

# OpenMP threads (torch's and vLLM's CPU kernels) spin at every barrier for a while before they sleep.
# When generation runs ahead of training (train.max_staleness > 0) the engine and the learners compute
# at the same time on the same cores, and each one's spinning threads hold the cores the other needs:
# a GRPO step ahead took 11.1 s with spinning threads and 7.1 s with these (synchronous: 7.3 s; there
# they cost 10%, so they are set only when generating ahead). Actors only, CPU only.
SLEEP_WHILE_WAITING = {"OMP_WAIT_POLICY": "PASSIVE"}


def actor_env(device: str, reuse_freed_memory: bool, environ: Mapping[str, str] | None = None,
              ahead: bool = False) -> dict[str, str]:
    """The environment variables every actor gets through Ray's runtime env: those of ``environ``
    (default ``os.environ``) the actors need, plus on CPU ``REUSE_FREED_MEMORY`` when asked and
    ``SLEEP_WHILE_WAITING`` when generation runs ahead of training (``ahead``). A value the user set
    in ``environ`` wins."""
    environ = os.environ if environ is None else environ
    names = ("DS_ACCELERATOR", "VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
             "RLHF_CACHE")
    env = {k: environ[k] for k in names if k in environ}
    if device == "cpu" and reuse_freed_memory:
        env.update({k: environ.get(k, v) for k, v in REUSE_FREED_MEMORY.items()})
    if device == "cpu" and ahead:
        env.update({k: environ.get(k, v) for k, v in SLEEP_WHILE_WAITING.items()})
    return env


def learner_config(cfg: RunConfig, model_path: str, device: str, total_steps: int, score_head: bool,
                   ship: Shipping | None = None) -> dict[str, Any]:
    """The plain dict ``actors.learner.LearnerActor`` takes (``ship``: ``Session.shipping``'s record)."""
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
        "ship": ship,
        "trust_remote_code": m.trust_remote_code,
    }


def generator_config(cfg: RunConfig, model_path: str, device: str, ship: Shipping | None = None,
                     sleep: bool = False) -> dict[str, Any]:
    """The plain dict ``actors.generator.GeneratorActor`` takes (``ship``: ``Session.shipping``'s record;
    ``sleep``: ``Session.takes_turns``)."""
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
        "ship": ship,
        "sleep": bool(sleep),
        "trust_remote_code": cfg.model.trust_remote_code,
    }


class Session:
    """Ray, the learner group, and (lazily) the reference actor and the generators."""

    def __init__(self, cfg: RunConfig, model_path: str, total_steps: int, score_head: bool,
                 ahead: bool = False) -> None:
        """``ahead``: some stage of the schedule generates ahead (``train.max_staleness > 0``)."""
        self.cfg = cfg
        self.device = resolve_device(cfg)
        self.ahead = ahead
        from rlhf.driver.fit import takes_turns

        # generators sleep, learners offload before they generate
        self.takes_turns = takes_turns(cfg, self.device, ahead)
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
        self._generator_restarts = 0
        self._placements: dict[str, Any] = {}  # role -> actors.placement.Placement (reserved bundles)
        self._released: dict[str, int] = {}  # role -> actors ended early (no later stage needed them)
        self._lock = threading.RLock()  # generate may run in a thread (generation ahead): one restart at a time
        self._shipping: dict[str, Shipping | None] = {}  # model path -> its record (packed and put once)
        prepare_environment(self.device)
        self._start_ray()

    # -- Ray -----------------------------------------------------------------------------------
    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        env = actor_env(self.device, self.cfg.cluster.reuse_freed_memory, ahead=self.ahead)
        # Inside `ray job submit`, the job's runtime env already reaches every actor, and ray.init refuses
        # to set again a variable it sets ("Failed to merge the Job's runtime env"): leave those to the job.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        job_vars = (job.get("runtime_env") or {}).get("env_vars") or {}
        runtime_env = {"env_vars": {k: v for k, v in env.items() if k not in job_vars}}
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
        if prestart_generators and not self.takes_turns:  # taking turns: engines start once learners are set up
            self._launch_generators()
        if prestart_reference:
            self._launch_reference()
        from actors.placement import role_resources

        config = learner_config(self.cfg, self.model_path, self.device, self.total_steps, self.score_head,
                                self.shipping(self.model_path))
        spec = role_resources(self.cfg, "learner", self.device)
        self.learners = LearnerGroup.start(self.cfg.train.num_learners, config, timeout_s=self.cfg.timeout_s,
                                           num_cpus=spec.num_cpus, strategy=spec.strategy, num_gpus=spec.num_gpus,
                                           resources=dict(spec.resources), placement_timeout_s=self._placement_wait)
        if config["ship"] is not None:
            print(f"learner rank 0 loaded the model from {self.learners.info[0]['model_path']}", flush=True)

    def shipping(self, model_path: str) -> Shipping | None:
        """How files reach the actors that load ``model_path`` and come back (``cluster.ship_files``):
        an ``actors.files.Shipping`` record, made once per folder and run (the folder is packed and
        ``ray.put`` once), or None where every actor shares the driver's files."""
        from actors.files import for_actors

        if model_path not in self._shipping:
            record = for_actors(self.cfg.cluster.ship_files, model_path)
            if record is not None:
                model = (f"the model folder {model_path} goes to the actors through Ray" if record.model_ref is not None
                         else f"{model_path} is not a folder here, each node loads it itself")
                print(f"cluster.ship_files={record.mode}: {model}; the learners send the model and checkpoints back",
                      flush=True)
            self._shipping[model_path] = record
        return self._shipping[model_path]

    @property
    def _placement_wait(self) -> float:
        """How long a role waits for its resources (``cluster.timeout_s``, else ``timeout_s``)."""
        return self.cfg.cluster.timeout_s or self.cfg.timeout_s

    def _place(self, role: str, n: int) -> Any:
        """Reserve ``n`` bundles of ``role`` (``cluster.<role>`` over the defaults) once per run; a bounded wait."""
        from actors.placement import place, role_resources

        if role not in self._placements:
            spec = role_resources(self.cfg, role, self.device)
            self._placements[role] = place(role, n, spec, self._placement_wait)
        return self._placements[role]

    def _launch_reference(self) -> None:
        if self.cfg.reference.colocated or self.reference is not None:
            return
        import ray

        from actors.reference import ReferenceActor

        config = learner_config(self.cfg, self.model_path, self.device, self.total_steps, self.score_head,
                                self.shipping(self.model_path))
        options = self._place("reference", 1).options(0)
        self.reference = ray.remote(ReferenceActor).options(**options).remote(config)

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

    def _launch_generator(self, index: int) -> Any:
        """Start building generator ``index`` (a vLLM engine in its own actor); returns its handle."""
        import ray

        from actors.generator import GeneratorActor

        options = self._place("generator", self.cfg.generator.num_engines).options(index)  # a restart: same bundle
        remote = ray.remote(GeneratorActor).options(**options)
        return remote.remote(index, generator_config(self.cfg, self.model_path, self.device,
                                                     self.shipping(self.model_path), self.takes_turns))

    def _launch_generators(self) -> None:
        if self.generators or self._pending_generators:
            return
        self._pending_generators = [self._launch_generator(i) for i in range(self.cfg.generator.num_engines)]

    def start_generators(self) -> None:
        """K vLLM engines, each in its own actor, and the weight transport to them."""
        if self.generators:
            return
        self._make_room()  # the engines start (then sleep) in the memory this frees
        self._launch_generators()
        self.generators, self._pending_generators = self._pending_generators, []
        loaded = [self._get(handle.ping.remote(), f"GeneratorActor[{i}]", "start")["model_path"]
                  for i, handle in enumerate(self.generators)]
        if self.shipping(self.model_path) is not None:
            print(f"generators loaded the model from {', '.join(sorted(set(loaded)))}", flush=True)
        self._connect_generators()

    def _connect_generators(self) -> None:
        """A new weight transport over every generator (a broadcast group cannot take in a new member)."""
        from actors.weight_sync import make_transport

        g = self.cfg.generator
        self._close_transport()
        transport = make_transport(g.sync, bucket_mb=g.bucket_mb, timeout_s=self.cfg.timeout_s, device=self.device)
        transport.setup(self.learners, self.generators)
        self.transport = transport
        self.synced_version = -1

    def sync_weights(self) -> dict[str, float]:
        """Send the learner's weights to every generator; returns seconds, bytes, the seconds of each of the
        transport's phases (``sync/<phase>``, e.g. ``sync/write``, ``sync/update``) and the run's actor restarts.

        A generator that died since the last call is replaced first (a sync to a dead member would
        block the sender until the transport's timeout). A generator found dead after a failed sync
        is replaced (with any generator that no longer answers: it is stuck in the broken group)
        and the sync runs again.
        """
        with self._lock:
            self._make_room()  # the engines wake their weights to take the new ones
            dead, _ = self._probe(self.generators)
            if dead:
                self._replace_generators(dead, "before a weight sync")
            while True:
                try:
                    stats = self.transport.sync(self.version)
                    break
                except Exception as err:
                    self._raise_if_learner_died(err, "sync_weights")
                    lost = self._lost_generators()
                    if not lost:
                        raise
                    self._replace_generators(lost, "during a weight sync")
            self.synced_version = self.version
        return {"sync/seconds": float(stats.seconds), "sync/bytes": float(stats.bytes),
                **{f"sync/{phase}": float(value) for phase, value in stats.phases.items()},
                "actors/restarts": float(sum(self.restarts.values()))}

    def generate(self, prompts: list[list[int]], sampling: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Shard ``prompts`` over the engines (contiguous slices); samples in prompt order.

        An engine that dies is replaced, the current weights are synced into it (and the others: the
        transport is formed again), and its shard is generated again. In the synchronous loop those
        are the weights the other engines used; with generation ahead, the policy may have moved on.
        """
        import ray

        self._make_room()  # the engines wake into the GPU memory this frees
        k = len(self.generators)
        size = -(-len(prompts) // k)
        shards = {i: prompts[i * size : (i + 1) * size] for i in range(k) if prompts[i * size : (i + 1) * size]}
        results: dict[int, list[list[dict[str, Any]]]] = {}
        while shards:
            refs = {i: self.generators[i].generate.remote(p, sampling) for i, p in shards.items()}
            dead: dict[int, BaseException] = {}
            for i, ref in refs.items():  # every live engine finishes its shard first
                try:
                    results[i] = self._get(ref, f"GeneratorActor[{i}]", "generate")
                except ray.exceptions.RayActorError as err:
                    dead[i] = err
            shards = {i: shards[i] for i in dead}
            if dead:
                with self._lock:
                    self._replace_generators(dead, "during generate")
                    self.sync_weights()
        return [samples for i in sorted(results) for samples in results[i]]

    def _make_room(self) -> None:
        """Where a learner and an engine take turns on one GPU (``takes_turns``): the learners move
        their optimizer-only state to host memory (a no-op when it is there already)."""
        if self.takes_turns and self.learners is not None:
            self.learners.offload_states()

    def _close_transport(self) -> None:
        """Close the weight transport, as far as it can: a member may be dead, and closing must not
        hide the error that brought us here."""
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None

    @property
    def restarts(self) -> dict[str, int]:
        """Actor restarts so far in this run, by role."""
        rm = getattr(self.reward_model, "restarts", 0)
        return {"generators": self._generator_restarts, "reward_model": int(rm)}

    def _replace_generators(self, lost: dict[int, BaseException], when: str) -> None:
        """Start a new engine in place of each lost one (same index and config), then a new transport.

        Raises a one-line RuntimeError once the run has used ``generator.max_restarts``.
        """
        import ray

        limit = self.cfg.generator.max_restarts
        for i, err in sorted(lost.items()):
            why = _error_line(err)
            if self._generator_restarts >= limit:
                raise RuntimeError(
                    f"GeneratorActor[{i}] died {when} ({why}); the run already restarted "
                    f"{self._generator_restarts} generator(s) and generator.max_restarts={limit} allows no more"
                ) from None
            self._generator_restarts += 1
            print(f"warning: GeneratorActor[{i}] died {when} ({why}); restarting it "
                  f"(restart {self._generator_restarts} of generator.max_restarts={limit})",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):  # already dead, or stuck: end it either way
                ray.kill(self.generators[i])
            self.generators[i] = self._launch_generator(i)
        for i in sorted(lost):
            try:
                self._get(self.generators[i].ping.remote(), f"GeneratorActor[{i}]", "restart")
            except ray.exceptions.RayActorError as err:
                raise RuntimeError(f"GeneratorActor[{i}] could not restart: {_error_line(err)}") from None
        self._connect_generators()

    def _probe(self, handles: list[Any]) -> tuple[dict[int, BaseException], list[int]]:
        """Which ``handles`` are dead (a no-op call fails with an actor error) and which did not answer
        within a few seconds (busy or stuck)."""
        import ray

        if not handles:
            return {}, []
        refs = {h.__ray_ready__.remote(): i for i, h in enumerate(handles)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=min(PROBE_S, self.cfg.timeout_s))
        dead: dict[int, BaseException] = {}
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                dead[refs[ref]] = err
        return dead, sorted(i for ref, i in refs.items() if ref not in ready)

    def _lost_generators(self) -> dict[int, BaseException]:
        """After a failed sync: the dead generators, plus those that no longer answer when any died."""
        dead, silent = self._probe(self.generators)
        if not dead:
            return {}
        stuck = TimeoutError(f"no answer within {min(PROBE_S, self.cfg.timeout_s):g} s after a failed weight sync")
        return {**dead, **{i: stuck for i in silent}}

    def _raise_if_learner_died(self, err: BaseException, method: str) -> None:
        """Raise an ``ActorCallError`` naming the learner rank when one died (the run cannot go on)."""
        from actors.group import ActorCallError

        dead, _ = self._probe(list(self.learners.actors))
        for rank, cause in sorted(dead.items()):
            raise ActorCallError(f"LearnerActor[rank {rank}].{method} failed: {_error_line(cause)}", rank, method,
                                 cause) from err

    def start_reward_model(self, path: str) -> Any:
        """A reward model trained by --algo rm, served by its own actor, restarted when it dies
        (``generator.max_restarts`` bounds it too); pass it to ``reward_model_reward``."""
        from actors.reward_model import RewardModelService

        if self.reward_model is None:
            self.reward_model = RewardModelService(
                {"model_path": path, "dtype": self.cfg.model.dtype, "device": self.device,
                 "ship": self.shipping(path), "trust_remote_code": self.cfg.model.trust_remote_code},
                self._place("reward_model", 1).options(0),
                max_restarts=self.cfg.generator.max_restarts, timeout_s=self.cfg.timeout_s,
                limit_name="generator.max_restarts")
        return self.reward_model

    def _get(self, ref: Any, actor: str, method: str) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=self.cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{actor}.{method} did not answer within {self.cfg.timeout_s:.0f} s") from None

    def started_actors(self) -> dict[str, int]:
        """How many actors of each role this run started (released ones included)."""
        now = {"learners": len(self.learners) if self.learners is not None else 0,
               "reference": int(self.reference is not None), "generators": len(self.generators),
               "reward_model": int(self.reward_model is not None)}
        return {k: max(v, self._released.get(k, 0)) for k, v in now.items()}

    def release(self, generators: bool = False, reference: bool = False) -> list[str]:
        """End the generators (and their weight transport) and/or the reference actor, when no later
        stage needs them, so their memory and devices are free; returns the roles released."""
        released = []
        if generators and self.generators:
            self._close_transport()
            self._end("generators", "generator", self.generators)
            self.generators, self.synced_version = [], -1
            released.append("generators")
        if reference and self.reference is not None:
            self._end("reference", "reference", [self.reference])
            self.reference = None
            released.append("reference")
        return released

    def _end(self, key: str, role: str, handles: list[Any]) -> None:
        """Kill ``handles`` (counted under ``key`` in ``started_actors``) and free ``role``'s bundles."""
        import ray

        self._released[key] = len(handles)
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        if role in self._placements:
            self._placements.pop(role).release()

    def actor_nodes(self) -> list[dict[str, Any]]:
        """Where each live actor runs, ``[{"role", "rank", "node_id"}]`` (``actors.placement.actor_nodes``;
        a dead or silent actor gets ``node_id: None`` and an ``error``, never an exception)."""
        from actors.placement import actor_nodes

        roles = {"learner": list(self.learners.actors) if self.learners is not None else [],
                 "generator": list(self.generators),
                 "reference": [self.reference] if self.reference is not None else [],
                 "reward_model": [self.reward_model.handle] if self.reward_model is not None else []}
        return actor_nodes({role: handles for role, handles in roles.items() if handles},
                           timeout_s=min(60.0, self.cfg.timeout_s))

    def close(self) -> None:
        import ray

        self._close_transport()
        if self.reward_model is not None:
            self.reward_model.kill()
        for handle in [self.reference, *self.generators, *self._pending_generators]:
            if handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(handle)
        if self.learners is not None:
            self.learners.shutdown()
        for placement in self._placements.values():
            placement.release()
        self._placements = {}
        if ray.is_initialized() and not self.cfg.ray_address:
            ray.shutdown()


def _error_line(err: BaseException) -> str:
    """``TypeName: first line`` of an error (Ray's actor errors run over many lines)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


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
