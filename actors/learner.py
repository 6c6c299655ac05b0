"""LearnerActor: one data-parallel rank of the policy, trained by DeepSpeed (ZeRO 0-3, optional LoRA).

The learner never branches on an objective's name: ``train_step`` reads the objective's
declaration (its policy ``output``, ``check_batch``, ``loss``) from ``rlhf.objectives``.

Gradient scale. Each objective returns this micro-batch's share of the **global** mean (see
``rlhf.reduction``), so the step's gradient must be the plain sum over micro-batches and ranks.
DeepSpeed divides by the accumulation steps (undone with ``backward(scale_wrt_gas=False)``) and
averages gradients over the data-parallel ranks (undone by multiplying the loss by
``world_size`` before backward). Gradient clipping then acts on that true global gradient.

Config (a plain dict built by the driver; defaults in ``DEFAULTS``):

| key                    | default     | meaning                                                         |
|------------------------|-------------|-----------------------------------------------------------------|
| model_path             | (required)  | HF folder of the initial policy                                 |
| dtype                  | "float32"   | "float32" or "bfloat16" (bf16 needs zero_stage >= 1)            |
| device                 | "cpu"       | "cpu" (gloo) or "cuda" (nccl, one GPU per actor)                |
| zero_stage             | 2           | DeepSpeed ZeRO stage 0-3                                        |
| lr                     | 1e-6        | peak learning rate (AdamW)                                      |
| weight_decay           | 0.0         | AdamW decay, not applied to biases and norm weights             |
| adam_betas             | (0.9, 0.95) |                                                                 |
| warmup_steps           | 0           | linear warm-up steps                                            |
| total_steps            | 0           | cosine decay ends here (0: constant after warm-up)              |
| min_lr_ratio           | 0.0         | cosine decays to lr * min_lr_ratio                              |
| max_grad_norm          | 1.0         | DeepSpeed gradient clipping (0: off)                            |
| micro_batch_size       | 1           | examples per micro-batch (DeepSpeed's bookkeeping)              |
| grad_accum             | 1           | micro-batches per optimizer step on each rank                   |
| lora_r                 | 0           | LoRA rank; 0 = full fine-tune                                   |
| lora_alpha             | 16          |                                                                 |
| lora_dropout           | 0.0         |                                                                 |
| lora_target            | "all-linear"| peft target_modules                                             |
| score_head             | False       | scalar head (AutoModelForSequenceClassification, num_labels=1)  |
| seed                   | 0           | same on every rank (ZeRO-3 partitions each rank's own init)     |
| timeout_s              | 600         | process-group / collective timeout                              |
| gradient_checkpointing | False       |                                                                 |
| reference_colocated    | False       | also hold a frozen copy of the initial model (compute_reference)|
| pack                   | True        | rows sharing a prompt run it once (``rlhf.packing``)            |
| ship                   | None        | ``actors.files.Shipping``: model in, outputs back through Ray   |
| trust_remote_code      | False       | run model code shipped with the folder (model.trust_remote_code) |
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from actors import common, files, model_io, offload
from actors.weight_sync import WeightSenderMixin
from rlhf.objectives.base import GlobalCounts, Objective

DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "zero_stage": 2,
    "lr": 1e-6,
    "weight_decay": 0.0,
    "adam_betas": (0.9, 0.95),
    "warmup_steps": 0,
    "total_steps": 0,
    "min_lr_ratio": 0.0,
    "max_grad_norm": 1.0,
    "micro_batch_size": 1,
    "grad_accum": 1,
    "lora_r": 0,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target": "all-linear",
    "score_head": False,
    "seed": 0,
    "timeout_s": 600.0,
    "gradient_checkpointing": False,
    "reference_colocated": False,
    "pack": True,
    "ship": None,
    "trust_remote_code": False,
}


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over ``DEFAULTS``; unknown keys and bad combinations fail in one line."""
    if "model_path" not in config:
        raise ValueError("learner config needs model_path")
    unknown = sorted(set(config) - set(DEFAULTS) - {"model_path"})
    if unknown:
        valid = ", ".join(["model_path", *DEFAULTS])
        raise ValueError(f"unknown learner config key(s) {', '.join(unknown)}; valid: {valid}")
    cfg = {**DEFAULTS, **config}
    common.torch_dtype(cfg["dtype"])
    common.backend_for(cfg["device"])
    if cfg["zero_stage"] not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {cfg['zero_stage']!r}")
    if cfg["dtype"] == "bfloat16" and cfg["zero_stage"] == 0:
        raise ValueError("dtype bfloat16 needs zero_stage >= 1 (stage 0 keeps no fp32 master weights)")
    if int(cfg["grad_accum"]) < 1 or int(cfg["micro_batch_size"]) < 1:
        raise ValueError("grad_accum and micro_batch_size must be >= 1")
    if cfg["ship"] is not None and not isinstance(cfg["ship"], files.Shipping):
        raise ValueError(f"ship must be an actors.files.Shipping or None, got {type(cfg['ship']).__name__}")
    return cfg


class LearnerActor(WeightSenderMixin):
    """One rank of the policy learner. Wrapped with ``ray.remote`` by ``actors.group``.

    Call order: ``address()`` on rank 0, then ``setup(addr, port)`` on every rank, then
    ``train_step`` / ``compute`` / ``save`` / ``full_state_dict`` on every rank together (each
    is a collective under ZeRO-3; ``train_step`` is one under every stage).
    """

    def __init__(self, rank: int, world_size: int, config: dict[str, Any]):
        self.rank = rank
        self.world_size = world_size
        self.cfg = resolve_config(config)
        self.engine = None
        self.reference: torch.nn.Module | None = None
        self.steps = 0
        self.offloaded = False  # the optimizer state is in host memory (offload_states) until the next step
        common.set_threads()

    # ---- set-up -------------------------------------------------------------------------------

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process group."""
        return common.free_address()

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group, build the model and its DeepSpeed engine.

        Returns ``{"params", "trainable_params", "setup_s", "device", "backend", "dtype", "zero_stage",
        "model_path", "ships"}`` (``model_path``: the folder it loaded, a shipped copy when shipping is
        active; ``ships``: whether it is, for this rank).
        """
        start = time.perf_counter()
        cfg = self.cfg
        # where shipping is active (actors.files): the shipped copy on this node, before anything loads
        cfg["model_path"] = files.ensure_local(cfg["model_path"], cfg["ship"], timeout_s=cfg["timeout_s"])
        device = cfg["device"]
        self.device = common.local_device(device)  # on GPU: select it before the NCCL group forms
        common.init_process_group(self.rank, self.world_size, master_addr, master_port, device, cfg["timeout_s"])
        deepspeed = common.import_deepspeed(device)
        self._deepspeed = deepspeed

        torch.manual_seed(int(cfg["seed"]))
        model = model_io.load_model(cfg["model_path"], cfg["score_head"], torch.float32, bool(cfg["trust_remote_code"]))
        if cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if int(cfg["lora_r"]) > 0:
            model = model_io.apply_lora(model, int(cfg["lora_r"]), cfg["lora_alpha"], cfg["lora_dropout"],
                                        cfg["lora_target"], cfg["score_head"])
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        optimizer = torch.optim.AdamW(
            self._param_groups(model), lr=cfg["lr"], betas=tuple(cfg["adam_betas"]), weight_decay=cfg["weight_decay"],
            **common.adamw_kernel(device),
        )
        warmup, total, floor = int(cfg["warmup_steps"]), int(cfg["total_steps"]), float(cfg["min_lr_ratio"])

        def make_scheduler(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: common.lr_factor(s, warmup, total, floor))

        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=make_scheduler, config=self._ds_config()
        )
        if self.world_size == 1 and int(cfg["zero_stage"]) == 0:
            # One rank has nothing to average: DeepSpeed would still flatten every gradient into
            # buckets, all-reduce them with itself and copy them back (profiled: the step's
            # aten::cat/copy_ time). A hand-written loop does none of it.
            self.engine.enable_backward_allreduce = False
        if cfg["reference_colocated"]:
            self.reference = self._frozen_copy()
        return {
            "params": params,
            "trainable_params": trainable,
            "setup_s": time.perf_counter() - start,
            "device": str(self.device),
            "backend": common.backend_for(device),
            "dtype": cfg["dtype"],
            "zero_stage": cfg["zero_stage"],
            "model_path": cfg["model_path"],
            "ships": files.ships(cfg["ship"]),
        }

    def _param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _ds_config(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "train_micro_batch_size_per_gpu": int(cfg["micro_batch_size"]),
            "gradient_accumulation_steps": int(cfg["grad_accum"]),
            "train_batch_size": int(cfg["micro_batch_size"]) * int(cfg["grad_accum"]) * self.world_size,
            "gradient_clipping": float(cfg["max_grad_norm"]),
            "zero_optimization": {"stage": int(cfg["zero_stage"])},
            "bf16": {"enabled": cfg["dtype"] == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def _frozen_copy(self) -> torch.nn.Module:
        dtype = common.torch_dtype(self.cfg["dtype"])
        torch.manual_seed(int(self.cfg["seed"]))  # a new score head starts exactly as the policy's
        model = model_io.load_model(self.cfg["model_path"], self.cfg["score_head"], dtype,
                                    bool(self.cfg["trust_remote_code"])).to(self.device)
        model.eval().requires_grad_(False)
        return model

    def start_stage(self, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float,
                    reset_optimizer: bool = False) -> dict[str, float]:
        """Begin a schedule stage: its own warm-up + cosine from ``lr``; optionally forget Adam's moments.

        The optimizer keeps its parameters (and, unless ``reset_optimizer``, its moment
        estimates); only the learning-rate schedule restarts. Returns the first step's rate.
        """
        self._require_resident()
        sched = self.engine.lr_scheduler
        sched.base_lrs = [float(lr)] * len(sched.base_lrs)
        sched.lr_lambdas = [lambda s: common.lr_factor(s, int(warmup_steps), int(total_steps), float(min_lr_ratio))
                            ] * len(sched.lr_lambdas)
        sched.last_epoch = 0
        first = [base * fn(0) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, value in zip(sched.optimizer.param_groups, first):
            group["lr"] = value
        sched._last_lr = first
        if reset_optimizer:
            for state in offload.torch_optimizer(self.engine).state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
                    elif key == "step":
                        state[key] = 0
        return {"lr": first[0]}

    # ---- training -----------------------------------------------------------------------------

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], objective: Objective, params: Any,
                   counts: GlobalCounts, on_policy: bool = False, is_cap: float | None = None) -> dict[str, float]:
        """One optimizer step over ``micro_batches`` (exactly ``grad_accum`` of them on every rank).

        ``objective`` is the registry record itself (so objectives registered by ``--import`` in
        the driver work here too), ``params`` its params dataclass, ``counts`` the step's global
        totals. With ``on_policy`` (a rollout that feeds exactly this one optimizer step), a batch
        without ``old_logps`` takes them from this very forward, detached: the same values a
        separate no-grad forward would give, without running it. The gap between those log-probs
        and the generator's ``behaviour_logps`` is then measured here (``logprob_gap/mean``,
        ``logprob_gap/max``). With ``is_cap`` (a rollout sampled by an older policy), the loss
        gets truncated importance weights ``min(pi_old / pi_behaviour, is_cap)`` (``is/mean``,
        ``is/max`` and ``is/truncated`` are logged).

        Returns the objective's metrics and ``loss``, each summed over micro-batches and ranks
        (so each is the global mean), plus ``grad_norm`` (before clipping), ``lr`` (the rate this
        step used) and ``skipped`` (1.0 when a non-finite loss or gradient on any rank skipped
        the step: weights and optimizer state are then untouched).
        """
        self._require_resident()
        gas = int(self.cfg["grad_accum"])
        if len(micro_batches) != gas:
            raise ValueError(
                f"learner rank {self.rank}: got {len(micro_batches)} micro-batches, config grad_accum is "
                f"{gas} (every rank needs exactly that many per step)"
            )
        engine = self.engine
        engine.train()
        if objective.step_statistic is not None and (self.world_size > 1 or gas > 1):
            # one micro-batch on one rank is the whole step: the loss's own estimate is exact (and
            # cheaper: no extra forward, and a packed batch shares each prompt with its statistic rows)
            micro_batches = self._with_step_statistic(micro_batches, objective, params)
        lr = float(engine.get_lr()[0])
        totals: dict[str, torch.Tensor] = {}
        peaks: dict[str, torch.Tensor] = {}
        grad_norm = None
        for index, raw in enumerate(micro_batches):
            batch = common.to_device(raw, self.device)
            out = model_io.policy_output(engine, batch, objective.output, pack=bool(self.cfg["pack"]))
            if on_policy and "old_logps" not in batch:
                batch["old_logps"] = out.detach()
                if "behaviour_logps" in batch:
                    self._gap_metrics(batch, counts, totals, peaks)
            if is_cap is not None and "behaviour_logps" in batch and "is_weights" not in batch:
                self._is_weights(batch, is_cap, counts, totals, peaks)
            objective.check_batch(batch, params)
            loss, metrics = objective.loss(out, batch, params, counts)
            if not self._all_finite(loss):
                return self._skip_step(index, lr, "loss")
            engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if index == gas - 1:
                if not self._all_finite(self._local_grad_check()):
                    return self._skip_step(index, lr, "gradient")
                if self.cfg["zero_stage"] == 0:
                    grad_norm = self._local_grad_norm()
            engine.step()
            for key, value in {**metrics, "loss": loss}.items():
                value = torch.as_tensor(value).detach().float().to(self.device).sum()
                totals[key] = totals.get(key, 0.0) + value
        self.steps += 1
        result = self._all_reduce(totals, torch.distributed.ReduceOp.SUM)
        result.update(self._all_reduce(peaks, torch.distributed.ReduceOp.MAX))
        norm = engine.get_global_grad_norm() if grad_norm is None else grad_norm
        result["grad_norm"] = float(norm) if norm is not None else float("nan")
        result["lr"] = lr
        result["skipped"] = 0.0
        return result

    def _gap_metrics(self, batch: dict[str, torch.Tensor], counts: GlobalCounts,
                     totals: dict[str, torch.Tensor], peaks: dict[str, torch.Tensor]) -> None:
        """|learner - generator| log-prob gap of this micro-batch: its share of the mean, and its max."""
        mask = batch["response_mask"].bool()
        diff = (batch["old_logps"] - batch["behaviour_logps"].float()).abs()[mask]
        totals["logprob_gap/mean"] = totals.get("logprob_gap/mean", 0.0) + diff.sum() / max(counts.tokens, 1)
        local_max = diff.max() if diff.numel() else torch.zeros((), device=diff.device)
        peaks["logprob_gap/max"] = torch.maximum(peaks.get("logprob_gap/max", local_max), local_max)

    def _with_step_statistic(self, micro_batches: list[dict[str, torch.Tensor]], objective: Objective,
                             params: Any) -> list[dict[str, torch.Tensor]]:
        """The objective's ``StepStatistic`` over this whole step: a no-grad forward of each
        micro-batch's statistic rows, summed over micro-batches and ranks (every rank runs the same
        number of forwards: a ZeRO-3 collective); returns the loss rows of each micro-batch with
        the value in ``stat.field``."""
        stat = objective.step_statistic
        parts = [stat.split(mb) for mb in micro_batches]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for rows, _ in parts:
                rows = common.to_device(rows, self.device)
                out = model_io.policy_output(self.engine, rows, objective.output, pack=bool(self.cfg["pack"]))
                value, count = stat.partial(out, rows, params)
                total += torch.stack([value.double(), count.double()]).to(self.device)
        torch.distributed.all_reduce(total)
        mean = (total[0] / total[1]).float() if float(total[1]) > 0 else torch.zeros((), device=self.device)
        return [{**loss_rows, stat.field: mean.cpu()} for _, loss_rows in parts]

    def _is_weights(self, batch: dict[str, torch.Tensor], cap: float, counts: GlobalCounts,
                    totals: dict[str, torch.Tensor], peaks: dict[str, torch.Tensor]) -> None:
        """Truncated IS weights of this micro-batch into ``batch``, and their metrics."""
        from rlhf.objectives._online import truncated_is_weights

        mask = batch["response_mask"].bool()
        raw = torch.exp(torch.clamp(batch["old_logps"] - batch["behaviour_logps"].float(), max=20.0))[mask]
        batch["is_weights"] = truncated_is_weights(batch["old_logps"], batch["behaviour_logps"], mask, cap)
        tokens = max(counts.tokens, 1)
        totals["is/mean"] = totals.get("is/mean", 0.0) + raw.clamp(max=cap).sum() / tokens
        totals["is/truncated"] = totals.get("is/truncated", 0.0) + (raw > cap).float().sum() / tokens
        local_max = raw.max() if raw.numel() else torch.zeros((), device=raw.device)
        peaks["is/max"] = torch.maximum(peaks.get("is/max", local_max), local_max)

    def _all_finite(self, value: torch.Tensor | None) -> bool:
        """Whether ``value`` is finite on every rank (a collective: every rank calls it at the same point)."""
        if value is None:
            bad = torch.zeros(1, device=self.device)
        else:  # computed on the device: the one host sync is the .item() after the all-reduce
            bad = (~torch.isfinite(value.detach())).any().float().reshape(1).to(self.device)
        torch.distributed.all_reduce(bad)
        return not bool(bad.item())

    def _local_grad_check(self) -> torch.Tensor | None:
        """Sum of this rank's gradients (NaN/Inf if any is), where whole gradients live on the params.

        ZeRO 0/1 keep them in ``param.grad``; ZeRO 2/3 move them into partitioned buffers during
        backward, where a non-finite value shows up in the loss of the next step instead (the loss
        check catches it before any update).
        """
        if int(self.cfg["zero_stage"]) > 1:
            return None
        grads = [p.grad.detach().float().sum() for p in self.engine.module.parameters() if p.grad is not None]
        return torch.stack(grads).sum() if grads else None

    def _skip_step(self, stepped: int, lr: float, what: str) -> dict[str, Any]:
        """Drop this optimizer step: clear gradients, keep weights and optimizer state, and realign
        DeepSpeed's micro-step counter as if all ``grad_accum`` micro-batches had been stepped
        (``stepped`` of them were)."""
        engine = self.engine
        engine.optimizer.zero_grad(set_to_none=True)
        engine.module.zero_grad(set_to_none=True)
        engine.micro_steps += int(self.cfg["grad_accum"]) - stepped
        return {"skipped": 1.0, "skip_reason": f"non-finite {what}", "lr": lr}

    def _local_grad_norm(self) -> float:
        """Global gradient norm at ZeRO stage 0 (gradients are whole and reduced after the last backward)."""
        squares = [p.grad.detach().float().pow(2).sum() for p in self.engine.module.parameters() if p.grad is not None]
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0

    def _all_reduce(self, values: dict[str, torch.Tensor], op: Any) -> dict[str, float]:
        """``values`` reduced with ``op`` over every rank (each rank must pass the same keys)."""
        keys = sorted(values)
        packed = torch.stack([values[k] for k in keys]) if keys else torch.zeros(0, device=self.device)
        torch.distributed.all_reduce(packed, op=op)
        return {k: float(v) for k, v in zip(keys, packed.tolist())}

    # ---- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def compute(self, batch: dict[str, torch.Tensor], output: str = "token_logps") -> torch.Tensor:
        """Policy ``output`` for ``batch`` without gradients (eval mode); a CPU float32 tensor.

        Under ZeRO-3 every rank must call it at the same time (each with its own rows).
        """
        self._require_setup()
        engine = self.engine
        was_training = engine.module.training
        engine.eval()
        try:
            batch = common.to_device(batch, self.device)
            return model_io.policy_output(engine, batch, output, pack=bool(self.cfg["pack"])).float().cpu()
        finally:
            engine.train(was_training)

    @torch.no_grad()
    def compute_reference(self, batch: dict[str, torch.Tensor], output: str = "token_logps") -> torch.Tensor:
        """The frozen initial model's ``output`` (needs ``reference_colocated``); CPU float32."""
        if self.reference is None:
            raise RuntimeError(f"learner rank {self.rank} holds no reference model (set reference_colocated: true)")
        batch = common.to_device(batch, self.device)
        return model_io.policy_output(self.reference, batch, output, pack=bool(self.cfg["pack"])).float().cpu()

    # ---- sharing a GPU with a vLLM engine -----------------------------------------------------

    def offload_states(self) -> float:
        """Move what only an optimizer step reads (Adam's state; under ZeRO 1-2 also the fp32
        master weights, under ZeRO 1-3 the gradient partitions) to host memory, freeing device memory for a vLLM
        engine on the same GPU (``actors.offload``). The model's weights stay: syncs and log-prob
        forwards still work. The next ``train_step`` / ``start_stage`` / checkpoint call moves it
        back. Every rank calls; returns the seconds it took (0 when already offloaded)."""
        self._require_setup()
        if self.offloaded:
            return 0.0
        start = time.perf_counter()
        offload.offload(self.engine, int(self.cfg["zero_stage"]), self.device)
        self.offloaded = True
        return time.perf_counter() - start

    def _require_resident(self) -> None:
        """``_require_setup``, and the offloaded state back on the device first."""
        self._require_setup()
        if self.offloaded:
            offload.reload(self.engine, int(self.cfg["zero_stage"]), self.device)
            self.offloaded = False

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, folder: str, tag: str) -> str | dict[str, bytes]:
        """Write this rank's share of the run state into ``folder``: DeepSpeed's own checkpoint
        (module, optimizer and LR-scheduler state per ZeRO rank, under ``folder/tag``) and this
        rank's RNG (``rng-learner-<rank>.pt``). Every rank calls; returns ``folder``.

        Where shipping is active (``actors.files``) ``folder`` is the driver's: this rank writes
        into a node-local scratch folder instead and returns its own files ``{relative_path: bytes}``.
        """
        from rlhf.checkpoint import save_rng

        self._require_resident()
        ship = files.ships(self.cfg["ship"])
        with files.scratch() if ship else _null(folder) as target:
            self.engine.save_checkpoint(target, tag=tag, client_state={"learner_steps": self.steps},
                                        save_latest=False)
            save_rng(target, f"learner-{self.rank}")
            torch.distributed.barrier()
            return files.pack_tree(target) if ship else folder

    def load_checkpoint(self, folder: str, tag: str, shipped: list | None = None) -> tuple[int, str]:
        """Restore what ``save_checkpoint`` wrote (weights, optimizer, LR schedule, RNG); every rank
        calls. Returns ``(optimizer steps this learner had taken, the folder it read)``.

        ``folder`` is the driver's. Where shipping is active (``actors.files``) and ``shipped`` is
        ``[ref]`` (``ref``: the driver's ``ray.put`` of ``files.pack_checkpoint``), this rank
        fetches those files into a node-local scratch folder and reads that instead.
        """
        from rlhf.checkpoint import load_rng, set_rng_state

        self._require_resident()
        ship = bool(shipped) and files.ships(self.cfg["ship"])
        name = Path(str(folder).rstrip("/")).name
        with files.fetched(shipped[0], name, self.cfg["timeout_s"]) if ship else _null(folder) as source:
            path, client = self.engine.load_checkpoint(source, tag=tag, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"learner rank {self.rank}: no DeepSpeed checkpoint {tag!r} in {folder}")
            self.steps = int((client or {}).get("learner_steps", 0))
            set_rng_state(load_rng(source, f"learner-{self.rank}"))
            return self.steps, str(source)

    # ---- export -------------------------------------------------------------------------------

    def _gather(self):
        if int(self.cfg["zero_stage"]) != 3:
            return None
        zero = self._deepspeed.zero
        return lambda params: zero.GatheredParameters(params, modifier_rank=None)

    def iter_state(self, device: str = "cpu", copy: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, tensor)`` pairs of the full merged model on ``device``, module by module (see ``model_io``).

        A local generator for code running inside this actor (e.g. a weight-sync transport that
        sends bucket by bucket). Under ZeRO-3 every rank must iterate it in step; every rank
        gets the full tensors. ``copy=False``: where the full tensors already live on this rank
        (ZeRO 0-2, no LoRA) they come as views of the parameters (``.to(device)``: no copy when
        already there), valid until the next optimizer step; elsewhere they are copies as usual.
        """
        self._require_setup()
        if not copy and self._gather() is None and int(self.cfg["lora_r"]) == 0:
            state = model_io.unwrap(self.engine.module).state_dict()  # the names and order of iter_full_state
            return ((name, tensor.to(device)) for name, tensor in state.items())
        return model_io.iter_full_state(self.engine.module, self._gather(), device)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named state dict (LoRA merged, ``lm_head.weight`` even when tied) on rank 0, else None.

        Every rank must call it (a collective under ZeRO-3).
        """
        state = {}
        for name, tensor in self.iter_state():
            if self.rank == 0:
                state[name] = tensor
        return state if self.rank == 0 else None

    def save(self, output_dir: str) -> str | dict[str, bytes]:
        """Write a transformers folder (merged weights + tokenizer) to ``output_dir``; every rank calls.

        Loads with ``AutoModelForCausalLM`` (``AutoModelForSequenceClassification`` with a score
        head). With LoRA the adapter is also saved under ``output_dir/adapter`` (peft format).
        Returns ``output_dir``; where shipping is active (``actors.files``), rank 0 writes into a
        scratch folder on its node and returns the folder's files ``{relative_path: bytes}``
        (the other ranks ``{}``), for the driver to write at ``output_dir``.
        """
        state = self.full_state_dict()
        hf_model = model_io.unwrap(self.engine.module)
        ship = files.ships(self.cfg["ship"])
        with files.scratch() if ship else _null(output_dir) as target:
            if self.rank == 0:
                model_io.save_hf_folder(state, hf_model.config, target, self.cfg["score_head"],
                                        self.cfg["model_path"])
            if int(self.cfg["lora_r"]) > 0:
                self._save_adapter(f"{target}/adapter")
            torch.distributed.barrier()
            return files.pack_tree(target) if ship else output_dir

    def _save_adapter(self, adapter_dir: str) -> None:
        peft_model = self.engine.module
        trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        gather = self._gather() or (lambda params: _null())
        with gather([p for _, p in trainable]):
            state = {n: p.detach().cpu().clone() for n, p in trainable} if self.rank == 0 else None
        if self.rank == 0:
            peft_model.save_pretrained(adapter_dir, state_dict=state)

    def _require_setup(self) -> None:
        if self.engine is None:
            raise RuntimeError(f"learner rank {self.rank}: setup() has not been called")


def _null(value: Any = None):
    import contextlib

    return contextlib.nullcontext(value)
