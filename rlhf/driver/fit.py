"""Fit a run onto the GPUs of this machine: roles share a GPU when there are not enough of them.

Only for a private local cluster on CUDA (``ray_address`` unset) and only where the user left the
setting alone; every change is printed and lands in ``config.yaml``:

- a reference model (DPO, KTO, a KL term) without a GPU of its own lives in the learners
  (``reference.colocated=true``: a frozen copy on each learner's GPU);
- online RL with fewer GPUs than learners + engines puts one learner and one vLLM engine on the
  same GPU (``cluster.learner.num_gpus=0.5``, ``cluster.generator.num_gpus=0.5``) and caps vLLM's
  share of its memory (``generator.gpu_memory_utilization`` at most 0.35, the KV cache included),
  leaving the rest to the learner's weights, gradients and Adam state (a 135M model in bf16 with
  fp32 master weights needs about 2.5 GB plus activations).

Where a learner and an engine share a GPU they also take turns with its memory
(``takes_turns``, ``generator.sleep``): the engine sleeps (vLLM's level-1 sleep: weights to host
memory, KV cache dropped) except while it takes new weights and generates, and the learners move
their optimizer state, fp32 master weights and gradient buffers to host memory (``actors.offload``)
before each weight sync, back at their next step. The engines start once the learners are set up
and have made room (``Session.start_generators``), so start-up needs no more than a turn either.
What the GPU must hold is then the larger of the two turns, not their sum (P parameters, bf16,
ZeRO 1-2 at one rank, plus each process's CUDA context):

- training: the learner's ~16 bytes/P (bf16 weights and gradients, fp32 master weights, Adam's
  two moments) + activations (+ 2 bytes/P for a reference kept in the learner);
- generating: the learner's bf16 weights (2 bytes/P, + 2 for the reference) + vLLM's bf16 weights
  (2 bytes/P) + its KV cache (``generator.gpu_memory_utilization`` bounds vLLM's own part).

SmolLM2-135M: ~2.2 GB + activations to train, ~0.6 GB + KV cache to generate; a 1.5B model ~24 GB
and ~6 GB + KV cache.

Not yet verified on a GPU by this project (it had none when this was written; on CPU the
learner's offload is tested bit-exact, vLLM has no sleep mode there).
"""

from __future__ import annotations

import dataclasses

from rlhf.config import RunConfig

SHARED_GPU_FRACTION = 0.5
SHARED_VLLM_MEMORY = 0.35


def fit_to_gpus(cfg: RunConfig, stages: list, gpus: int) -> tuple[RunConfig, list[str]]:
    """``cfg`` adjusted for ``gpus`` local GPUs, and one line per change made."""
    changes: list[str] = []
    t, c, g = cfg.train, cfg.cluster, cfg.generator
    needs_ref = any(s.needs_reference for s in stages)
    online = any(s.online for s in stages)
    if needs_ref and not cfg.reference.colocated and c.reference.num_gpus is None and gpus < t.num_learners + 1:
        cfg = dataclasses.replace(cfg, reference=dataclasses.replace(cfg.reference, colocated=True))
        changes.append(f"reference.colocated=true ({gpus} GPU(s): the reference lives in the learners)")
    wanted = t.num_learners + g.num_engines * g.tensor_parallel_size
    if (online and gpus < wanted and t.num_learners == 1 and g.num_engines == 1 and g.tensor_parallel_size == 1
            and c.learner.num_gpus is None and c.generator.num_gpus is None):
        share = {"num_gpus": SHARED_GPU_FRACTION}
        cluster = dataclasses.replace(c, learner=dataclasses.replace(c.learner, **share),
                                      generator=dataclasses.replace(c.generator, **share))
        memory = min(g.gpu_memory_utilization, SHARED_VLLM_MEMORY)
        cfg = dataclasses.replace(cfg, cluster=cluster,
                                  generator=dataclasses.replace(g, gpu_memory_utilization=memory))
        turns = ("" if g.sleep == "never" or cfg.train.max_staleness
                 else ", taking turns with its memory (generator.sleep)")
        changes.append(f"cluster.learner.num_gpus={SHARED_GPU_FRACTION} cluster.generator.num_gpus="
                       f"{SHARED_GPU_FRACTION} generator.gpu_memory_utilization={memory} "
                       f"({gpus} GPU(s) for 1 learner + 1 vLLM engine: they share one{turns})")
    return cfg, changes


def takes_turns(cfg: RunConfig, device: str, ahead: bool = False) -> bool:
    """Whether the generators sleep between generations and the learners offload before them
    (``generator.sleep``): ``always``/``never`` as given; ``auto`` on CUDA when the learner and the
    generator each ask for a fraction of a GPU (they share one) and generation does not run ahead
    (in ``cfg``, nor in any other stage of the schedule: ``ahead``)."""
    g, c = cfg.generator, cfg.cluster
    if g.sleep != "auto":
        return g.sleep == "always"
    fraction = [n is not None and 0.0 < n < 1.0 for n in (c.learner.num_gpus, c.generator.num_gpus)]
    return device == "cuda" and all(fraction) and cfg.train.max_staleness == 0 and not ahead
