"""GeneratorActor: one vLLM engine that samples completions and takes new weights in place.

A plain class; the driver makes it remote (``ray.remote(num_cpus=..., num_gpus=...)`` or an
``ActorGroup``). The vLLM engine core runs inside the actor's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights handed to ``load_weights`` reach the model
by reference, and an engine never shares a process with a learner (it pins threads and seeds
the process's global RNGs). On CPU a whole state is written without vLLM's layer-by-layer reload
(``actors.cpu_reload``: copies and the kernels' repacking only, 0.08 s instead of 0.21-0.29 s for
538 MB), and the actor's malloc keeps freed memory for reuse (``keep_freed_memory``): the repacked
weights then fault in no fresh pages after the first update.

Config (a plain dict; defaults in ``DEFAULTS``):

| key                    | default       | meaning                                                      |
|------------------------|---------------|--------------------------------------------------------------|
| model_path             | (required)    | HF folder of the initial policy (with its tokenizer)         |
| dtype                  | "float32"     | engine dtype; keep float32 on CPU (no bf16 kernels here)     |
| device                 | "cpu"         | "cpu" or "cuda" (picks the weight-sync backend: gloo / nccl) |
| max_model_len          | 1024          | prompt + completion tokens                                   |
| kv_cache_bytes         | 256 MiB       | KV-cache size; None: vLLM's default (gpu_memory_utilization) |
| seed                   | 0             | engine seed is ``seed + index`` (generators differ)          |
| tensor_parallel_size   | 1             | GPU only                                                     |
| enforce_eager          | True          | no torch.compile / CUDA graphs (fast start)                  |
| gpu_memory_utilization | 0.5           | GPU only                                                     |
| max_num_batched_tokens | None          | vLLM's scheduler budget per step (None: vLLM's default)      |
| logprobs_mode          | "raw_logprobs"| what ``logps`` holds, see ``generate``                       |
| ship                   | None          | ``actors.files.Shipping``: the model comes through Ray       |
| sleep                  | False         | vLLM sleep mode between generations (CUDA; see below)        |
| trust_remote_code      | False         | run model code shipped with the folder                       |

Sleep (``sleep=True``, for an engine that shares its GPU with a learner: ``generator.sleep``).
The engine starts with vLLM's sleep mode on and goes to sleep (level 1: weights copied to host
memory, KV cache dropped) right after start-up and after every ``generate``, so the learner has
the GPU while it trains. ``load_weights`` wakes the weights only (the new ones are written in
place on the GPU); ``generate`` wakes everything, samples, and sleeps again. vLLM offers sleep
mode on CUDA (and ROCm / XPU) only: asked for elsewhere, the actor fails to start with one line.

Log-probs. ``generate`` returns, for each generated token, its log-probability as vLLM reports
it with ``logprobs=0`` (the sampled token only). With ``logprobs_mode="raw_logprobs"`` (the
default) that is ``log_softmax(logits)[token]`` of the model's own distribution: no
temperature, no top-k / top-p, exactly what the learner's forward pass computes for the same
token at temperature 1. ``"processed_logprobs"`` instead reports the distribution actually
sampled from (logits divided by the temperature, top-k / top-p applied and renormalised); use
it only when the learner scores tokens the same way.

The seed is set once on the engine (``LLM(seed=...)``): per-request seeds crash vLLM's CPU
sampler once a prefill is chunked. A fresh actor with the same index and config replays the
same samples for the same calls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from actors.files import ensure_local
from actors.weight_sync import TIED_EMBED, TIED_HEAD, NumpyState, WeightReceiverMixin, WeightSyncError, memory_key

DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "max_model_len": 1024,
    "kv_cache_bytes": 256 << 20,
    "seed": 0,
    "tensor_parallel_size": 1,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.5,
    "max_num_batched_tokens": None,
    "logprobs_mode": "raw_logprobs",
    "ship": None,
    "sleep": False,
    "trust_remote_code": False,
}
SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "max_tokens", "stop_token_ids", "min_tokens")
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` over ``DEFAULTS``; unknown keys and bad values fail in one line."""
    if "model_path" not in config:
        raise ValueError("generator config needs model_path")
    unknown = sorted(set(config) - set(DEFAULTS) - {"model_path"})
    if unknown:
        raise ValueError(
            f"unknown generator config key(s) {', '.join(unknown)}; valid: model_path, {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **config}
    if cfg["device"] not in ("cpu", "cuda"):
        raise ValueError(f"generator device must be 'cpu' or 'cuda', got {cfg['device']!r}")
    if cfg["device"] == "cpu" and int(cfg["tensor_parallel_size"]) != 1:
        raise ValueError(f"tensor_parallel_size must be 1 on cpu, got {cfg['tensor_parallel_size']}")
    if cfg["logprobs_mode"] not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode {cfg['logprobs_mode']!r} is not supported; valid: {', '.join(LOGPROBS_MODES)}")
    if int(cfg["max_model_len"]) < 2:
        raise ValueError(f"max_model_len must be >= 2, got {cfg['max_model_len']}")
    if cfg["sleep"] and cfg["device"] != "cuda":
        raise ValueError(f"sleep mode needs device 'cuda' (vLLM frees GPU memory with it), got {cfg['device']!r}")
    return cfg


class GeneratorActor(WeightReceiverMixin):
    """One vLLM engine. Methods: ``generate``, ``load_weights``, ``ping`` and the receiving ends of
    the weight-sync backends (``actors.weight_sync.WeightReceiverMixin``: ``join_weight_group``,
    ``receive_weights``, ``load_shared_weights``, ``close_weight_group``). ``version`` counts
    weight updates (0 = the weights of model_path).
    """

    def __init__(self, index: int, config: Mapping[str, Any]):
        self.index = int(index)
        self.cfg = resolve_config(config)
        self.cfg["model_path"] = ensure_local(str(self.cfg["model_path"]), self.cfg["ship"])
        self.name = f"generator {self.index}"
        self.version = 0
        self._incomplete = False  # a weight update failed half-way: refuse to generate
        self._asleep: set[str] = set()  # vLLM memory tags released by sleep mode ("weights", "kv_cache")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if self.cfg["device"] == "cpu":
            keep_freed_memory()
        from vllm import LLM

        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            model=str(cfg["model_path"]),
            dtype=cfg["dtype"],
            max_model_len=int(cfg["max_model_len"]),
            seed=int(cfg["seed"]) + self.index,
            enforce_eager=bool(cfg["enforce_eager"]),
            logprobs_mode=cfg["logprobs_mode"],
            tensor_parallel_size=int(cfg["tensor_parallel_size"]),
            trust_remote_code=bool(cfg["trust_remote_code"]),
        )
        if cfg["kv_cache_bytes"] is not None:
            kwargs["kv_cache_memory_bytes"] = int(cfg["kv_cache_bytes"])
        if cfg["max_num_batched_tokens"] is not None:
            kwargs["max_num_batched_tokens"] = int(cfg["max_num_batched_tokens"])
        if cfg["device"] == "cuda":
            kwargs["gpu_memory_utilization"] = float(cfg["gpu_memory_utilization"])
        if cfg["sleep"]:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise RuntimeError(f"{self.name}: vLLM has no sleep mode on this platform; set generator.sleep=never")
            kwargs["enable_sleep_mode"] = True
        start = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise RuntimeError(f"{self.name}: vLLM could not start on {cfg['model_path']!r}: {exc}") from exc
        self.start_seconds = time.perf_counter() - start
        hf_config = self.llm.llm_engine.model_config.hf_config
        self._tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        self._sleep()  # with sleep mode: the GPU is the learner's until the first generate

    # ---- sleep mode (an engine that shares its GPU with a learner) -----------------------------

    def _sleep(self) -> None:
        """Level-1 sleep (weights to host memory, KV cache dropped) where sleep mode is on."""
        if self.cfg["sleep"] and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        """Bring back the memory ``tags`` name (``"weights"``, ``"kv_cache"``) that sleep released."""
        wanted = [t for t in tags if t in self._asleep]
        if wanted:
            self.llm.wake_up(tags=wanted)
            self._asleep -= set(wanted)

    # ---- sampling ------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        """Sample ``n`` completions for each prompt (token ids).

        ``sampling`` keys: ``n``, ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (0 = off),
        ``max_tokens``, ``stop_token_ids``, ``min_tokens``. Returns one list per prompt of ``n``
        dicts: ``completion_ids`` (list[int]), ``text`` (special tokens skipped), ``logps``
        (list[float], one per completion token, see the module docstring), ``finish_reason``
        (``"stop"``: eos or a stop token, included in ``completion_ids``; ``"length"``) and
        ``version`` (the weight version that produced it).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._incomplete:
            raise RuntimeError(f"{self.name}: a weight update failed half-way; load a full state before generating")
        params = SamplingParams(**_sampling_kwargs(sampling), logprobs=0)
        limit = int(self.cfg["max_model_len"])
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"{self.name}: prompt {i} is empty")
            if len(prompt) >= limit:
                raise ValueError(f"{self.name}: prompt {i} has {len(prompt)} tokens; max_model_len is {limit}")
        if not prompts:
            return []
        self._wake("weights", "kv_cache")
        try:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts], params, use_tqdm=False
            )
        finally:
            self._sleep()
        return [[self._sample(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]

    def _sample(self, completion: Any) -> dict[str, Any]:
        ids = [int(t) for t in completion.token_ids]
        positions = completion.logprobs or []
        if len(positions) != len(ids):
            raise RuntimeError(f"{self.name}: vLLM returned {len(positions)} log-probs for {len(ids)} tokens")
        return {
            "completion_ids": ids,
            "text": completion.text,
            "logps": [float(pos[t].logprob) for pos, t in zip(positions, ids)],
            "finish_reason": str(completion.finish_reason),
            "version": self.version,
        }

    # ---- weights -------------------------------------------------------------------------

    def load_weights(self, weights: Any, version: int | None = None) -> dict[str, Any]:
        """Replace the engine's weights in place and clear its prefix cache.

        ``weights``: ``(hf_name, tensor)`` pairs (a list or any iterable), a ``{name: tensor}``
        dict, or a ``NumpyState``. Names are the HF checkpoint names; dtypes are converted to the
        engine's. All weights must come in one call (vLLM reloads layer by layer; a layer that
        gets no tensor keeps its old weights). If loading fails half-way the engine refuses to
        generate until a later ``load_weights`` succeeds. For a tied
        model a missing ``lm_head.weight`` is taken from ``model.embed_tokens.weight``.
        ``version`` defaults to the current one + 1. Returns ``{"name", "version", "tensors",
        "bytes", "seconds", "reload_s", "reset_s", "path"}``: ``reload_s`` is the weight update
        (with the receiving when ``weights`` is a stream), ``reset_s`` the prefix-cache reset, and
        ``path`` how the update went: ``"direct"`` (CPU, all weights at once: ``actors.cpu_reload``
        writes them and repacks the linear layers) or ``"vllm"`` (vLLM's ``reload_weights``: a
        stream, a GPU, or weights the direct path cannot place).
        """
        start = time.perf_counter()
        named = _named_tensors(weights)
        if isinstance(named, (list, tuple, dict, NumpyState)) and len(named) == 0:
            raise ValueError(f"{self.name}: load_weights got no tensors")
        counts = {"tensors": 0, "bytes": 0}
        items = self._complete(named.items() if isinstance(named, (dict, NumpyState)) else named, counts)
        # CPU and every tensor at hand at once (not a stream): try actors.cpu_reload first
        direct = self.cfg["device"] == "cpu" and isinstance(named, (list, tuple, dict, NumpyState))
        if int(self.cfg["tensor_parallel_size"]) > 1 or direct:
            items = list(items)  # worker processes need a picklable argument; the direct path looks twice
        self._wake("weights")  # new weights are written in place: they must be on the GPU
        self._incomplete = True  # until the reload below returns
        reload_start = time.perf_counter()
        path = "vllm"
        try:
            if direct and self._load_direct(items):
                path = "direct"
            else:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        except WeightSyncError:
            raise
        except Exception as exc:
            raise RuntimeError(f"{self.name}: loading weights failed: {exc}") from exc
        self._incomplete = False
        reset_start = time.perf_counter()
        self.llm.reset_prefix_cache()
        self.version = self.version + 1 if version is None else int(version)
        end = time.perf_counter()
        return {"name": self.name, "version": self.version, **counts, "seconds": end - start,
                "reload_s": reset_start - reload_start, "reset_s": end - reset_start, "path": path}

    def _load_direct(self, items: list[tuple[str, torch.Tensor]]) -> bool:
        """CPU: write ``items`` into the engine's model and repack its linear layers
        (``actors.cpu_reload``); False, with nothing written, when they cannot all be placed."""
        from actors import cpu_reload

        def load(model: torch.nn.Module) -> bool:
            placed = cpu_reload.plan(model, items)
            if placed is None:
                return False
            cpu_reload.apply(model, placed)
            return True

        return all(self.llm.apply_model(load))

    def _complete(self, items: Iterable[tuple[str, torch.Tensor]], counts: dict[str, int]) -> Iterator:
        """Count what passes and, for tied models, add ``lm_head.weight`` when it never came."""
        embed, head_seen = None, False
        for name, tensor in items:
            counts["tensors"] += 1
            if not (name == TIED_HEAD and embed is not None and memory_key(tensor) == memory_key(embed)):
                counts["bytes"] += tensor.numel() * tensor.element_size()  # a tied pair's buffer counts once
            head_seen = head_seen or name == TIED_HEAD
            if name == TIED_EMBED and self._tied:
                embed = tensor
            yield name, tensor
        if self._tied and not head_seen and embed is not None:
            yield TIED_HEAD, embed

    # ---- health --------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``{"name", "index", "version", "pid", "model_path", "asleep"}``: cheap liveness check
        (``model_path``: the folder the engine loaded, a shipped copy where shipping is active;
        ``asleep``: the vLLM memory tags sleep mode has released right now)."""
        return {"name": self.name, "index": self.index, "version": self.version, "pid": os.getpid(),
                "model_path": self.cfg["model_path"], "asleep": sorted(self._asleep)}


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse instead of returning it to the kernel.

    A weight update on CPU allocates and frees about a model's worth of buffers (the oneDNN
    weights repacked; with vLLM's ``reload_weights``, the fallback, also the layers materialised).
    With glibc's defaults the large ones are fresh ``mmap``s, so each update pays a page fault per
    4 KiB touched (SmolLM2-135M fp32 here, vLLM's reload: 55-79k faults and 0.34-0.59 s per
    reload; with this, ~0 faults after the second, 0.16 s); with mmap off and no trimming they are
    reused from the heap. The price: the process keeps its peak heap. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)))


def _sampling_kwargs(sampling: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling key(s) {', '.join(unknown)}; valid: {', '.join(SAMPLING_KEYS)}")
    kwargs = dict(sampling)
    if kwargs.get("top_k") in (None, -1):
        kwargs["top_k"] = 0
    if kwargs.get("stop_token_ids") is None:
        kwargs.pop("stop_token_ids", None)
    return kwargs


def _named_tensors(weights: Any) -> Any:
    if isinstance(weights, (NumpyState, dict)):
        return weights
    if isinstance(weights, Mapping):
        return dict(weights)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        kind = type(weights).__name__
        raise TypeError(f"load_weights expects (name, tensor) pairs, a dict or a NumpyState, got {kind}")
    return weights

