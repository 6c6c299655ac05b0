"""Policy models in and out: load (+ LoRA, + score head), forward to the objectives' outputs, export.

Policy outputs follow ``rlhf.objectives.base``:

- ``"token_logps"``: ``[R, T]`` float32, ``out[r, t] = log p(x_t | x_<t)`` at the completion
  tokens (``response_mask == 1``; every real token after the first when the batch has no
  ``response_mask``), 0 elsewhere.
- ``"score"``: ``[R]`` float32, the scalar head read at the last real token of each row (the
  last position with ``attention_mask == 1``; rows are right padded).

A score-head model is an ``AutoModelForSequenceClassification`` with ``num_labels = 1`` (the
base model plus a bias-free ``score`` linear layer), so a saved folder loads back as a scoring
model. Its forward pools at the rightmost token that is not ``pad_token_id``; ours pools by the
attention mask, which agrees whenever no real token equals the pad token.

Export: ``iter_full_state`` walks the model module by module and yields HF-named full tensors,
with LoRA deltas merged into the base weights (peft's ``base_model.model.`` prefix and
``.base_layer.`` removed) and every name of a tied parameter (``lm_head.weight`` too). Under
ZeRO-3 the caller passes ``gather``, a context manager factory that materialises a list of
parameters on every rank (DeepSpeed's ``GatheredParameters``): every rank must then iterate.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

Gather = Callable[[list[torch.nn.Parameter]], contextlib.AbstractContextManager]
OUTPUTS = ("token_logps", "score")


def load_model(model_path: str, score_head: bool, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False) -> torch.nn.Module:
    """Load ``model_path`` as a causal LM, or as a 1-label sequence classifier when ``score_head``
    (``trust_remote_code``: run model code shipped with the folder, ``model.trust_remote_code``).

    From a causal LM folder the ``score`` layer is new (initialised from torch's current seed);
    from a saved scoring folder it is the trained one. A model without ``pad_token_id`` gets the
    eos id as pad (transformers refuses batches > 1 otherwise).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if score_head:
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=dtype,
                                                                   trust_remote_code=trust_remote_code)
        if model.config.pad_token_id is None:
            eos = model.config.eos_token_id
            model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    return model


def apply_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float, target: str | list[str],
               score_head: bool) -> torch.nn.Module:
    """Wrap ``model`` in peft LoRA adapters (only the adapters train; a score head trains fully)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target,
        task_type="SEQ_CLS" if score_head else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine and/or a peft wrapper."""
    model = getattr(model, "module", model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[R, T, V]`` logits (position ``t`` predicts ``t + 1``) -> ``[R, T]`` float32 token log-probs.

    The plain full-vocabulary reference; ``policy_output`` computes the same values only where
    they are read.
    """
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = shifted.gather(-1, targets).squeeze(-1) - torch.logsumexp(shifted, dim=-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = picked * attention_mask[:, 1:].to(picked.dtype)
    return out


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[R]`` index of each right-padded row's last real token; a row must have one."""
    lengths = attention_mask.long().sum(-1)
    if bool((lengths == 0).any()):
        empty = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no real token (attention_mask all 0)")
    return lengths - 1


def _can_pack(model: torch.nn.Module) -> bool:
    """Packing passes a custom 4D attention mask: SDPA and eager attention take one, flash kernels do not."""
    impl = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
    return impl in ("sdpa", "eager")


# log-softmax over the vocabulary in row chunks, so no [N, V] float32 copy of bf16 logits is made at once
_LOGSOFTMAX_CHUNK = 2048


def _picked_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` logits, ``[N]`` token ids -> ``[N]`` float32 ``log softmax(logits)[target]``."""
    parts = []
    for chunk, tgt in zip(logits.split(_LOGSOFTMAX_CHUNK), targets.split(_LOGSOFTMAX_CHUNK)):
        chunk = chunk.float()
        parts.append(chunk.gather(-1, tgt[:, None]).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


def selected_token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], pack: bool = True) -> torch.Tensor:
    """``[R, T]`` float32 log-probs of the completion tokens only (``response_mask``; all real tokens
    after the first when the batch has none), 0 elsewhere.

    The output head and the log-softmax run only at the positions that predict those tokens (a
    forward pre-hook on the output embedding hands it just those hidden states), so no
    ``[R, T, V]`` logits tensor exists. With ``pack`` (and an attention implementation that takes
    a 4D mask), rows that share a prompt run it once (``rlhf.packing``).
    """
    from rlhf.packing import pack_shared_prefixes

    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    wanted = batch.get("response_mask", attention_mask).bool() & attention_mask.bool()
    wanted[:, 0] = False
    rows, cols = wanted.nonzero(as_tuple=True)
    targets = input_ids[rows, cols]
    head = unwrap(model).get_output_embeddings()
    if pack and "response_mask" in batch and _can_pack(model):
        packed = pack_shared_prefixes(input_ids, attention_mask, batch["response_mask"])
        impl = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
        mask = packed.attention_mask(None if impl == "sdpa" else head.weight.dtype)
        inputs = {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids}
        at_row, at_pos = packed.predictor(rows, cols)
    else:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        at_row, at_pos = rows, cols - 1

    def only_needed(_module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0][at_row, at_pos].unsqueeze(0),)

    handle = head.register_forward_pre_hook(only_needed)
    try:
        logits = model(**inputs, use_cache=False).logits[0]  # [N, V]
    finally:
        handle.remove()
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    return out.index_put((rows, cols), _picked_logps(logits, targets))


def policy_output(model: torch.nn.Module, batch: dict[str, torch.Tensor], output: str,
                  pack: bool = True) -> torch.Tensor:
    """Forward ``model`` (an engine, peft or HF model) on ``batch``; return ``output`` (see module doc).

    The whole model's forward is called (so DeepSpeed's hooks see the usual module order).
    ``token_logps`` are computed at completion positions only (``selected_token_logps``); for
    ``score`` the head's per-position output is captured by a forward hook and read at
    ``last_token_index``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"unknown policy output {output!r}; valid: {', '.join(OUTPUTS)}")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if output == "token_logps":
        return selected_token_logps(model, batch, pack)
    head = getattr(unwrap(model), "score", None)
    if head is None:
        raise ValueError("output 'score' needs a model with a score head (learner config score_head: true)")
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    per_position = captured[-1].squeeze(-1).float()  # [R, T]
    rows = torch.arange(per_position.shape[0], device=per_position.device)
    return per_position[rows, last_token_index(attention_mask).to(per_position.device)]


def _shared_parameter_ids(model: torch.nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _walk(module: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.nn.Module, bool]]:
    """``(prefix, module, is_lora)`` for every module whose own tensors belong to the export."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(module, LoraLayer):
        yield prefix, module, True
        return
    if isinstance(module, ModulesToSaveWrapper):
        yield from _walk(module.modules_to_save[module.active_adapters[0]], prefix)
        return
    yield prefix, module, False
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}{name}.")


def _own_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b


def iter_full_state(model: torch.nn.Module, gather: Gather | None = None,
                    device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor on device)`` for the whole model, LoRA merged, tied names repeated.

    Names and shapes are exactly those of the base transformers model's ``state_dict()``
    (``lm_head.weight`` included when it is tied to the embeddings). Tensors keep the model's
    dtype; a LoRA merge is computed in float32. Tensors of tied parameters are shared objects.
    """
    hf_model = unwrap(model)
    gather = gather or (lambda params: contextlib.nullcontext())
    shared = _shared_parameter_ids(hf_model)
    shared_out: dict[int, torch.Tensor] = {}
    for prefix, module, is_lora in _walk(hf_model, ""):
        if is_lora:
            params = list(module.parameters())
            with gather(params), torch.no_grad():
                base = module.get_base_layer()
                for name, tensor in _own_tensors(base):
                    value = tensor.detach()
                    if name == "weight" and not module.merged:
                        merged = value.float()
                        for adapter in module.active_adapters:
                            if adapter in module.lora_A:
                                merged = merged + module.get_delta_weight(adapter).float()
                        value = merged.to(tensor.dtype)
                    yield f"{prefix}{name}", value.to(device, copy=True)
            continue
        own = list(_own_tensors(module))
        if not own:
            continue
        params = [t for _, t in own if isinstance(t, torch.nn.Parameter)]
        with gather(params), torch.no_grad():
            for name, tensor in own:
                key = id(tensor)
                if key in shared_out:
                    yield f"{prefix}{name}", shared_out[key]
                    continue
                value = tensor.detach().to(device, copy=True)
                if key in shared:
                    shared_out[key] = value
                yield f"{prefix}{name}", value


def save_hf_folder(state: dict[str, torch.Tensor], config: Any, output_dir: str | Path, score_head: bool,
                   source_path: str | None = None) -> Path:
    """Write ``state`` (full HF-named tensors) as a transformers folder, plus tokenizer files.

    The folder loads with ``AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification``
    when ``score_head``). Tokenizer and generation-config files are copied from ``source_path``
    when it has them.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cls = AutoModelForSequenceClassification if score_head else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"saving {out}: state does not match {cls.__name__}: missing {missing}, unexpected {unexpected}"
        )
    if not score_head and source_path is not None:
        with contextlib.suppress(OSError):
            model.generation_config = GenerationConfig.from_pretrained(source_path)
    model.save_pretrained(out)
    if source_path is not None:
        copy_tokenizer(source_path, out)
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def copy_tokenizer(source: str | Path, target: str | Path) -> list[str]:
    """Copy the tokenizer files that ``source`` has into ``target``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if path.is_file():
            shutil.copyfile(path, Path(target) / name)
            copied.append(name)
    return copied
