"""Replace a vLLM CPU engine's weights in place without vLLM's layer-by-layer reload.

vLLM's ``reload_weights`` rebuilds every layer the way it was first loaded: it materialises each
layer's checkpoint-format parameters, runs the weight loaders into them, then repacks each linear
layer for its CPU kernel (oneDNN) and frees the unpacked copy. On CPU that costs 0.21-0.29 s for
SmolLM2-135M (538 MB), of which the repacking itself is about a third. Here the repacking is all
that is left: each linear layer's new weight is handed to vLLM's own ``dispatch_cpu_unquantized_gemm``
(the call its ``process_weights_after_loading`` makes, so the same kernel is picked), straight from
the tensors received — for a fused layer (``qkv_proj`` from ``q_proj``, ``k_proj``, ``v_proj``)
a view over its parts when they lie back to back in one buffer (the shared-memory file does),
a concatenation otherwise; every other parameter (norms, biases, embeddings) is copied in place,
and a head that computes through the embedding is repacked once.

``plan`` places every incoming tensor before anything is written, and only in a model whose
vLLM class loads checkpoint tensors as they are (``AS_IS``: no transposes, permutations or
offsets in its loaders); weights it cannot place exactly (a name the model lacks, a quantized
or LoRA layer, a parameter with a loader of its own, a shape, vocabulary or device that differs,
tensor parallelism) make it return None and the caller uses vLLM's ``reload_weights`` instead.
A layer whose repacking fails keeps its previous kernel (the caller then refuses to generate
until a later update succeeds). Needs the model's ``packed_modules_mapping`` (vLLM's own record
of which checkpoint tensors a fused layer stacks). No tensor handed in is kept: the kernels hold
their own packed copies, so views of a shared-memory file or of receive buffers may be reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

UNQUANTIZED = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")
AS_IS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
PLAIN_LOADERS = (None, "default_weight_loader", "VocabParallelEmbedding.weight_loader")


@dataclass
class Fused:
    """A linear layer whose weight is rebuilt from ``parts`` (checkpoint tensors, in stacking order)."""

    module: torch.nn.Module
    parts: list[torch.Tensor | None]
    bias: list[torch.Tensor | None] = field(default_factory=list)


@dataclass
class Plan:
    """Where each incoming tensor goes: ``linears`` are repacked, ``copies`` written in place,
    ``heads`` (embedding-backed output layers) repacked after their weights are copied."""

    linears: list[Fused]
    copies: list[tuple[torch.Tensor, torch.Tensor]]
    heads: list[torch.nn.Module]


def plan(model: torch.nn.Module, items: Sequence[tuple[str, torch.Tensor]]) -> Plan | None:
    """Place ``items`` (HF checkpoint names) in ``model`` (a vLLM CPU model), or None unless every
    tensor has exactly one place of its shape and every parameter and repacked layer gets all it
    needs. Writes nothing."""
    if type(model).__name__ not in AS_IS:
        return None
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    mapping = getattr(model, "packed_modules_mapping", {})  # fused layer name -> the parts it stacks
    stacked = {part: (fused, i) for fused, parts in mapping.items() for i, part in enumerate(parts)}
    linears: dict[str, Fused] = {}
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    written: set[int] = set()
    for name, tensor in items:
        path, leaf = name.rpartition(".")[::2]
        parent, _, last = path.rpartition(".")
        index = 0
        if path not in modules and last in stacked:
            fused_name, index = stacked[last]
            path = f"{parent}.{fused_name}" if parent else fused_name
        module = modules.get(path)
        method = None if module is None else _method(module)
        if module is None or method not in (None, *UNQUANTIZED):
            return None
        if method == UNQUANTIZED[0]:
            if not _repackable(module) or leaf not in ("weight", "bias"):
                return None
            sizes = list(module.output_partition_sizes)
            if len(sizes) != len(mapping.get(path.rpartition(".")[2], [path])) or index >= len(sizes):
                return None
            want = (sizes[index], module.input_size_per_partition) if leaf == "weight" else (sizes[index],)
            if tuple(tensor.shape) != want or tensor.device.type != "cpu":
                return None
            entry = linears.setdefault(path, Fused(module, [None] * len(sizes), [None] * len(sizes)))
            (entry.parts if leaf == "weight" else entry.bias)[index] = tensor
            continue
        param = params.get(name)
        if param is None:
            return None
        if id(param) in written:
            continue  # a tied head: the embedding's own parameter, placed already
        target = param.data
        if _loader(param) not in PLAIN_LOADERS or tensor.device != target.device:
            return None
        if method == UNQUANTIZED[1]:  # the vocabulary may be padded: rows beyond it are zeroed
            vocabulary = (getattr(module, "org_vocab_size", None), target.shape[1])
            if (tuple(tensor.shape) != vocabulary or getattr(module, "num_added_embeddings", 0)
                    or getattr(module, "tp_size", 1) != 1):
                return None
        elif tuple(tensor.shape) != tuple(target.shape):
            return None
        written.add(id(param))
        copies.append((target, tensor))
    if {path for path, m in modules.items() if _method(m) == UNQUANTIZED[0]} != set(linears):
        return None
    for entry in linears.values():
        with_bias = getattr(entry.module, "bias", None) is not None
        if any(p is None for p in entry.parts) or any((b is None) == with_bias for b in entry.bias):
            return None
    inside = {f"{path}.{leaf}" for path in linears for leaf in ("weight", "bias")}
    if any(p.numel() and id(p) not in written and name not in inside for name, p in params.items()):
        return None
    heads = [m for m in modules.values()
             if _method(m) == UNQUANTIZED[1] and hasattr(m, "cpu_linear") and id(m.weight) in written]
    return Plan(list(linears.values()), copies, heads)


def _method(module: torch.nn.Module) -> str | None:
    """The class name of ``module``'s vLLM quantization method (None for a module without one)."""
    method = getattr(module, "quant_method", None)
    return None if method is None else type(method).__name__


def _loader(param: torch.nn.Parameter) -> str | None:
    """The qualified name of the weight loader vLLM attached to ``param`` (None: it has none)."""
    loader = getattr(param, "weight_loader", None)
    return None if loader is None else getattr(getattr(loader, "__func__", loader), "__qualname__", repr(loader))


def _repackable(module: torch.nn.Module) -> bool:
    """A single-rank linear layer whose CPU kernel holds the packed weight (vLLM removed its own)."""
    return getattr(module, "tp_size", 1) == 1 and hasattr(module, "cpu_linear") and module.weight.numel() == 0


def apply(model: torch.nn.Module, placed: Plan) -> None:
    """Write ``placed`` into ``model``: copies first, then every linear layer and head repacked.

    A repacking that raises leaves its layer as it was (previous kernel, no weight kept) and
    re-raises; layers before it have their new weights."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    with torch.no_grad():
        for target, tensor in placed.copies:
            rows = tensor.shape[0] if tensor.dim() else 0
            if tensor.dim() == 2 and rows < target.shape[0]:  # a padded vocabulary: the padding rows are zero
                target[:rows].copy_(tensor)
                target[rows:].zero_()
            else:
                target.copy_(tensor)
        for entry in placed.linears:
            module = entry.module
            before = module.weight
            try:
                module.weight = torch.nn.Parameter(stack(entry.parts, before.dtype), requires_grad=False)
                if entry.bias and entry.bias[0] is not None:  # rounded to the weights' dtype, as vLLM's loader does
                    module.bias.data.copy_(torch.cat([b.to(before.dtype) for b in entry.bias]))
                dispatch_cpu_unquantized_gemm(module, remove_weight=True)
            except BaseException:
                module.weight = before
                raise
            if module.weight.numel():  # a kernel that kept the weight given: it must own it
                module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False)
                dispatch_cpu_unquantized_gemm(module, remove_weight=True)
        done: dict[int, object] = {}
        for module in placed.heads:
            key = id(module.weight)
            if key in done:
                module.cpu_linear = done[key]  # an embedding and its tied head: one repack serves both
                continue
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            done[key] = module.cpu_linear


def stack(parts: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``torch.cat(parts)`` in ``dtype``; a view, not a copy, when the parts already lie back to
    back in one storage in that dtype (2D, row-major, same width)."""
    first = parts[0]
    if len(parts) == 1:
        return first.to(dtype).contiguous()
    adjacent = all(p.dtype == dtype and p.is_contiguous() and p.dim() == 2 and p.shape[1] == first.shape[1]
                   and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in parts)
    if adjacent:
        for before, after in zip(parts, parts[1:]):
            if after.storage_offset() != before.storage_offset() + before.numel():
                adjacent = False
                break
    if not adjacent:
        return torch.cat([p.to(dtype) for p in parts])
    rows = sum(p.shape[0] for p in parts)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, first.shape[1]))
