"""Learner actors on a real local Ray cluster with DeepSpeed on CPU (gloo), on the tiny model.

The ground truth of one optimizer step is computed here with plain torch: the objective's loss
over the whole global batch in one piece, autograd, gradient clipping and torch's AdamW. The
learners must reproduce it whatever the data-parallel size, accumulation split and ZeRO stage.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.batch import collate_pairs, global_counts, shard

LR = 1e-2
BASE = {"lr": LR, "max_grad_norm": 1.0, "seed": 0, "timeout_s": 120, "adam_betas": (0.9, 0.95)}

# Four preference pairs of token ids (the tiny vocab has 640 ids; 3 is the pad id).
PAIRS = [
    {"prompt_ids": [10, 11, 12], "chosen_ids": [20, 21, 22, 23], "rejected_ids": [30, 31]},
    {"prompt_ids": [40, 41], "chosen_ids": [50, 51], "rejected_ids": [60, 61, 62, 63, 64]},
    {"prompt_ids": [70, 71, 72, 73], "chosen_ids": [80], "rejected_ids": [90, 91, 92]},
    {"prompt_ids": [100], "chosen_ids": [110, 111, 112], "rejected_ids": [120, 121]},
]
PAD = 3


def counts_of(pairs) -> dict[str, int]:
    c = global_counts("pairs", pairs)
    return {"examples": c.examples, "tokens": c.tokens}


def step_args(pairs, world_size: int, grad_accum: int, objective: str = "simpo", params=None) -> list[tuple]:
    """``per_rank`` arguments of ``train_step`` for a global batch split over ranks x micro-batches:
    the objective record itself, its params dataclass, the global counts."""
    from rlhf.objectives import GlobalCounts, get

    record = get(objective)
    counts = GlobalCounts(**counts_of(pairs))
    return [
        ([collate_pairs(micro, PAD) for micro in rank_chunks], record, record.make_params(params or {}), counts)
        for rank_chunks in shard(pairs, world_size, grad_accum)
    ]


def reference_logps(model, batch) -> torch.Tensor:
    """Token log-probs written out plainly: log_softmax over the vocabulary, pick the next token.
    Like the learner's, they are kept at completion tokens only (``response_mask``)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = torch.zeros(batch["input_ids"].shape)
    for r in range(out.shape[0]):
        for t in range(1, out.shape[1]):
            if batch["attention_mask"][r, t]:
                out[r, t] = logp[r, t - 1, batch["input_ids"][r, t]]
    return out * batch["response_mask"]


def torch_step(model_path: str, pairs, max_grad_norm: float) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One SimPO step on the whole global batch with plain torch: (loss, grad norm, new state dict)."""
    from transformers import AutoModelForCausalLM

    from rlhf.objectives import GlobalCounts, get

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    simpo = get("simpo")
    batch = collate_pairs(pairs, PAD)
    loss, _ = simpo.loss(reference_logps(model, batch), batch, simpo.make_params(), GlobalCounts(**counts_of(pairs)))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0).step()
    return float(loss.detach()), float(norm), {k: v.detach().clone() for k, v in model.state_dict().items()}


def start_layouts(model_path: str, layouts: dict[str, tuple[int, int, int]], groups: dict) -> None:
    """A learner group per ``{name: (ranks, grad_accum, zero stage)}``, added to ``groups`` as each
    starts (the caller shuts down whatever started, also after a failure part-way)."""
    from actors.group import start_learners

    for name, (ranks, accum, stage) in layouts.items():
        config = {**BASE, "model_path": model_path, "zero_stage": stage, "grad_accum": accum}
        groups[name] = start_learners(ranks, config, timeout_s=300)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def mean_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    total = sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a)
    return total / sum(v.numel() for v in a.values())


def tied_copy(model_path: str, out: Path) -> str:
    """A copy of the tiny model with tied input/output embeddings (lm_head = embed_tokens)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(model_path) / name).is_file():
            shutil.copyfile(Path(model_path) / name, out / name)
    return str(out)


def test_lr_factor_warmup_then_cosine():
    from actors.common import lr_factor

    # warm-up 4 steps: 1/4, 2/4, 3/4, 4/4; then cosine over steps 4..12 down to 0.1
    assert [lr_factor(s, 4, 12, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(8, 4, 12, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr_factor(12, 4, 12, 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 4, 12, 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 0, 0, 0.0) == 1.0  # no schedule: constant


@pytest.mark.integration
def test_one_step_is_invariant_to_ranks_accumulation_and_stage(ray_cluster, tiny_model, tmp_path):
    """2 ranks x 2 micro-batches (ZeRO-2) == 1 rank x 4 (ZeRO-3) == 1 rank x 1 (ZeRO-0) == plain torch."""
    from transformers import AutoModelForCausalLM


    want_loss, want_norm, want_state = torch_step(tiny_model, PAIRS, BASE["max_grad_norm"])
    layouts = {  # name: (ranks, grad_accum, zero stage)
        "2x2-zero2": (2, 2, 2),
        "1x4-zero3": (1, 4, 3),
        "1x1-zero0": (1, 1, 0),
    }
    groups = {}
    try:
        start_layouts(tiny_model, layouts, groups)
        for name, (ranks, accum, _) in layouts.items():
            group = groups[name]
            metrics = group.call("train_step", per_rank=step_args(PAIRS, ranks, accum))
            assert metrics[0] == metrics[-1], "every rank reports the same all-reduced metrics"
            assert metrics[0]["loss"] == pytest.approx(want_loss, abs=1e-5), name
            assert metrics[0]["grad_norm"] == pytest.approx(want_norm, rel=1e-4), name
            assert metrics[0]["lr"] == pytest.approx(LR)
            assert 0.0 <= metrics[0]["rewards/accuracy"] <= 1.0
            state = group.call("full_state_dict")
            assert state[1:] == [None] * (ranks - 1)
            # Adam's first step moves each weight by about lr * g / (|g| + 1e-8): where |g| is ~1e-8
            # (cancelling sums) fp32 round-off in g shows up at ~1e-3 lr; plain torch alone moves
            # by 4e-4 lr between a 1-piece and a 4-piece batch. A lost or doubled micro-batch moves
            # weights by ~lr; a gradient scale error fails the grad_norm check above.
            assert max_diff(state[0], want_state) < 1e-2 * LR, name
            assert mean_diff(state[0], want_state) < 1e-5 * LR, name

        # ZeRO-2 with 2 ranks keeps learning on the repeated batch.
        two = groups["2x2-zero2"]
        losses = [two.call("train_step", per_rank=step_args(PAIRS, 2, 2))[0]["loss"] for _ in range(3)]
        assert losses[-1] < losses[0] < want_loss, losses

        # DPO with the policy's own log-probs as reference: every log-ratio is 0, loss = log 2.
        one = groups["1x1-zero0"]
        batch = collate_pairs(PAIRS, PAD)
        ref = one.call("compute", batch, "token_logps")[0]
        assert ref.shape == batch["input_ids"].shape and ref.dtype == torch.float32
        dpo_args = step_args(PAIRS, 1, 1, "dpo", {"beta": 0.1})
        dpo_args[0][0][0]["ref_token_logps"] = ref
        dpo = one.call("train_step", per_rank=dpo_args)[0]
        assert dpo["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert dpo["rewards/margin"] == pytest.approx(0.0, abs=1e-5)

        # A full fine-tune under ZeRO-3 saves a folder AutoModelForCausalLM loads with the same weights.
        three = groups["1x4-zero3"]
        three.call("save", str(tmp_path / "full"))
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32)
        assert max_diff(dict(saved.state_dict()), three.call("full_state_dict")[0]) == 0.0
        assert (tmp_path / "full" / "tokenizer.json").is_file()
    finally:
        for group in groups.values():
            group.shutdown()


def kto_examples() -> list[dict]:
    """Four KTO rows from PAIRS (2 desirable, 2 undesirable), each with its global mismatched completion."""
    from rlhf.batch import mismatched_completions

    rows = [{"prompt_ids": p["prompt_ids"], "completion_ids": p["chosen_ids" if i % 2 == 0 else "rejected_ids"],
             "label": 1 - i // 2} for i, p in enumerate(PAIRS)]
    return [{**e, "kl_completion_ids": c} for e, c in zip(rows, mismatched_completions(rows))]


def kto_batch(model, examples) -> dict[str, torch.Tensor]:
    """Collated KTO rows with a reference 0.2 nats per completion token below the model: every
    row's rho is 0.2 x its completion length, so micro-batches would disagree on their own z0."""
    from rlhf.batch import collate

    batch = collate("unpaired", examples, PAD)
    with torch.no_grad():
        batch["ref_token_logps"] = reference_logps(model, batch) - 0.2 * batch["response_mask"]
    return batch


@pytest.mark.integration
def test_kto_step_is_invariant_to_ranks_and_accumulation(ray_cluster, tiny_model):
    """KTO's KL point is the whole step's (a no-grad pass first, then an all-reduce): 2 ranks x 2
    micro-batches (ZeRO-2) == 1 rank x 4 (ZeRO-3) == 1 x 1 (ZeRO-0) == plain torch in one piece."""
    from transformers import AutoModelForCausalLM

    from rlhf.batch import global_counts
    from rlhf.objectives import get

    kto, examples = get("kto"), kto_examples()
    params, counts = kto.make_params({"beta": 0.5}), global_counts("unpaired", examples)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    whole = kto_batch(model, examples)
    want, metrics = kto.loss(reference_logps(model, whole), whole, params, counts)
    want.backward()
    want_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), BASE["max_grad_norm"]))
    torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0).step()
    want_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert metrics["kl"].item() > 0.2  # z0 = mean of 0.2 x lengths 2, 4, 1, 2: not clamped

    init = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layouts = {"1x1-zero0": (1, 1, 0), "2x2-zero2": (2, 2, 2), "1x4-zero3": (1, 4, 3)}
    groups = {}
    try:
        start_layouts(tiny_model, layouts, groups)
        for name, (ranks, accum, _) in layouts.items():
            per_rank = [([kto_batch(init, micro) for micro in chunks], kto, params, counts)
                        for chunks in shard(examples, ranks, accum)]
            got = groups[name].call("train_step", per_rank=per_rank)[0]
            assert got["loss"] == pytest.approx(want.item(), abs=1e-5), name
            assert got["kl"] == pytest.approx(metrics["kl"].item(), abs=1e-5), name
            assert got["grad_norm"] == pytest.approx(want_norm, rel=1e-4), name
            state = groups[name].call("full_state_dict")[0]
            # Adam's first step turns fp32 round-off of near-zero gradients into up to ~0.03 lr here
            # (measured 2-3e-4 with lr 1e-2; mean 3e-9): a per-micro-batch z0 fails the loss above.
            assert max_diff(state, want_state) < 1e-1 * LR and mean_diff(state, want_state) < 1e-5 * LR, name
    finally:
        for group in groups.values():
            group.shutdown()


@pytest.mark.integration
def test_zero3_lora_two_ranks_trains_exports_and_saves(ray_cluster, tiny_model, tmp_path):
    """ZeRO-3 + LoRA on a tied-embedding model: loss goes down; merged export and saved folders agree."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from actors.group import start_learners

    model_path = tied_copy(tiny_model, tmp_path / "tied")
    config = {**BASE, "model_path": model_path, "zero_stage": 3, "lora_r": 4, "lora_alpha": 8, "grad_accum": 1,
              "reference_colocated": True}
    group = start_learners(2, config, timeout_s=300)
    try:
        info = group.info[0]
        assert 0 < info["trainable_params"] < info["params"] and info["backend"] == "gloo"
        losses = [group.call("train_step", per_rank=step_args(PAIRS, 2, 1))[0]["loss"] for _ in range(4)]
        assert losses[-1] < losses[0], losses

        state = group.call("full_state_dict")[0]
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        assert base.config.tie_word_embeddings
        assert sorted(state) == sorted(base.state_dict()) and "lm_head.weight" in state
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base.state_dict().items()}
        assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
        assert not torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                               base.state_dict()["model.layers.0.self_attn.q_proj.weight"]), "LoRA delta merged"

        out = tmp_path / "saved"
        assert group.call("save", str(out)) == [str(out)] * 2
        assert (out / "tokenizer.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert max_diff(dict(merged.state_dict()), state) == 0.0

        batch = collate_pairs(PAIRS, PAD)
        learner = group.call("compute", batch, "token_logps")[0]
        with torch.no_grad():
            assert (reference_logps(merged, batch) - learner).abs().max() < 1e-5
            adapted = PeftModel.from_pretrained(base, str(out / "adapter"))  # base + delta behaves the same
            assert (reference_logps(adapted, batch) - learner).abs().max() < 1e-5
            initial = reference_logps(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), batch)
        colocated = group.call("compute_reference", batch)[0]
        assert (colocated - initial).abs().max() < 1e-5
        assert (learner - initial).abs().max() > 1e-3
    finally:
        group.shutdown()


@pytest.mark.integration
def test_score_head_learner_saves_a_scoring_model_and_skips_a_nan_step(ray_cluster, tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from actors.group import start_learners

    config = {**BASE, "model_path": tiny_model, "zero_stage": 1, "score_head": True, "grad_accum": 2,
              "warmup_steps": 2, "total_steps": 4, "min_lr_ratio": 0.5}
    group = start_learners(1, config, timeout_s=300)
    try:
        steps = [group.call("train_step", per_rank=step_args(PAIRS, 1, 2, "rm"))[0] for _ in range(3)]
        assert [s["lr"] for s in steps] == pytest.approx([LR / 2, LR, LR])  # warm-up 1/2, 2/2; cosine starts at 1
        losses = [s["loss"] for s in steps]
        assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # a fresh head scores pairs about equally
        assert losses[-1] < losses[0], losses

        out = tmp_path / "rm"
        group.call("save", str(out))
        scorer = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32)
        assert scorer.config.num_labels == 1
        batch = collate_pairs(PAIRS, PAD)
        want = group.call("compute", batch, "score")[0]
        assert want.shape == (2 * len(PAIRS),)
        with torch.no_grad():  # HF pools at the last non-pad token: the same row ends as ours
            got = scorer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        assert (got - want).abs().max() < 1e-5

        # A NaN loss skips the step: weights, optimizer and LR schedule untouched; the next step trains.
        before = group.call("full_state_dict")[0]
        bad = group.call("train_step", per_rank=step_args(PAIRS, 1, 2, "rm", {"margin": float("nan")}))[0]
        assert bad["skipped"] == 1.0 and bad["skip_reason"] == "non-finite loss"
        assert max_diff(group.call("full_state_dict")[0], before) == 0.0
        good = group.call("train_step", per_rank=step_args(PAIRS, 1, 2, "rm"))[0]
        # the skipped step did not advance the schedule: this is step 3 of warm-up 2 + cosine to 4
        assert good["skipped"] == 0.0 and good["lr"] == pytest.approx(LR * (0.5 + 0.5 * 0.5))
        assert max_diff(group.call("full_state_dict")[0], before) > 0.0
    finally:
        group.shutdown()


@pytest.mark.integration
def test_reference_actor_matches_the_initial_model(ray_cluster, tiny_model):
    from transformers import AutoModelForCausalLM

    from actors.group import ActorGroup
    from actors.reference import ReferenceActor

    group = ActorGroup(ReferenceActor, 1, lambda rank: ({"model_path": tiny_model},), name="reference", timeout_s=120)
    try:
        batch = collate_pairs(PAIRS, PAD)
        got = group.call("compute", batch)[0]
        with torch.no_grad():
            want = reference_logps(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), batch)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-5
    finally:
        group.shutdown()


@pytest.mark.integration
def test_placement_group_wait_is_bounded_and_says_why(ray_cluster):
    from actors.group import ActorGroup
    from actors.reference import ReferenceActor

    with pytest.raises(TimeoutError, match=r"waited 2 s for 64 x \{'CPU': 1\.0\}.*cluster has \d+ CPUs"):
        ActorGroup(ReferenceActor, 64, lambda rank: ({},), name="too-big", timeout_s=2)


@pytest.mark.integration
def test_an_actor_that_fails_to_start_is_named(ray_cluster, tiny_model):
    from actors.group import ActorCallError, ActorGroup
    from actors.reference import ReferenceActor

    with pytest.raises(ActorCallError, match=r"ReferenceActor\[rank 0\]\.__init__ failed: .*zero_stage must be"):
        ActorGroup(ReferenceActor, 1, lambda rank: ({"model_path": tiny_model, "zero_stage": 7},), timeout_s=60)


# -- sharing a GPU with a vLLM engine: offload_states between steps ---------------------------
# On CPU both ends of the move are host memory, but the bookkeeping runs for real: DeepSpeed's
# offload_states / reload_states of the ZeRO-2 optimizer (fp32 master weights, Adam's moments,
# gradient partitions) and the ZeRO-0 path that moves the torch optimizer's state.

@pytest.mark.integration
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_offload_between_steps_changes_nothing_bit_for_bit(ray_cluster, tiny_model, tmp_path, stage):
    from actors.group import start_learners

    config = {**BASE, "model_path": tiny_model, "zero_stage": stage, "grad_accum": 2}
    plain = start_learners(1, config, timeout_s=300)
    shared = start_learners(1, config, timeout_s=300)
    try:
        for _ in range(3):
            assert shared.call("offload_states")[0] >= 0.0
            assert shared.call("offload_states") == [0.0]  # a second call finds nothing left to move
            # between steps the weights are still there for a sync or a log-prob forward
            assert shared.call("full_state_dict")[0].keys() == plain.call("full_state_dict")[0].keys()
            a = plain.call("train_step", per_rank=step_args(PAIRS, 1, 2))[0]
            b = shared.call("train_step", per_rank=step_args(PAIRS, 1, 2))[0]
            assert a == b
        want, got = plain.call("full_state_dict")[0], shared.call("full_state_dict")[0]
        assert all(torch.equal(want[k], got[k]) for k in want)
        # the optimizer state came back too: a checkpoint after an offload holds the same moments
        shared.call("offload_states")
        plain.call("save_checkpoint", str(tmp_path / "plain"), "t")
        shared.call("save_checkpoint", str(tmp_path / "shared"), "t")
        name, key = (("mp_rank_00_model_states.pt", "optimizer") if stage == 0
                     else ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "optimizer_state_dict"))
        load = lambda root: torch.load(root / "t" / name, map_location="cpu", weights_only=False)[key]  # noqa: E731
        want_opt, got_opt = load(tmp_path / "plain"), load(tmp_path / "shared")
        assert _equal(want_opt, got_opt) and str(want_opt).count("tensor") > 0
    finally:
        plain.shutdown()
        shared.shutdown()


def _equal(a, b) -> bool:
    """Nested dicts / lists / tensors equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (type(a) is type(b) and repr(a) == repr(b))  # e.g. DeepSpeed's loss scaler
