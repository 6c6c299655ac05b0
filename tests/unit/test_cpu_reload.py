"""``actors.cpu_reload.stack``: a fused layer's weight is a view when its parts lie back to back."""

from __future__ import annotations

import torch

from actors.cpu_reload import stack


def test_adjacent_parts_are_viewed_not_copied():
    flat = torch.arange(5 * 3 * 4, dtype=torch.float32)
    q, k, v = flat[:24].view(8, 3), flat[24:36].view(4, 3), flat[36:48].view(4, 3)
    fused = stack([q, k, v], torch.float32)
    assert torch.equal(fused, torch.cat([q, k, v]))
    assert fused.data_ptr() == q.data_ptr() and fused.shape == (16, 3)
    flat[0] = -1.0
    assert fused[0, 0] == -1.0  # the same memory


def test_parts_that_are_not_adjacent_are_concatenated():
    flat = torch.arange(60, dtype=torch.float32)
    q, v = flat[:24].view(8, 3), flat[36:48].view(4, 3)  # a gap between them
    gap = stack([q, v], torch.float32)
    assert torch.equal(gap, torch.cat([q, v])) and gap.data_ptr() != q.data_ptr()
    swapped = stack([flat[24:36].view(4, 3), q], torch.float32)  # adjacent in memory, not in this order
    assert torch.equal(swapped, torch.cat([flat[24:36].view(4, 3), q]))
    other = stack([q.double(), flat[24:36].view(4, 3).double()], torch.float32)  # another dtype: converted
    assert other.dtype == torch.float32 and torch.equal(other, flat[:36].view(12, 3))
    single = stack([q], torch.float32)
    assert single is q


# ---- plan(): fakes shaped like the modules vLLM leaves on CPU after loading -------------------


class UnquantizedLinearMethod:
    pass


class UnquantizedEmbeddingMethod:
    pass


class Linear(torch.nn.Module):
    """A linear layer whose kernel holds the packed weight: vLLM replaced ``weight`` with an empty one."""

    def __init__(self, sizes: list[int], width: int, bias: bool = False):
        super().__init__()
        self.quant_method = UnquantizedLinearMethod()
        self.output_partition_sizes, self.input_size_per_partition, self.tp_size = sizes, width, 1
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(sum(sizes)), requires_grad=False) if bias else None
        self.cpu_linear = object()


class Embedding(torch.nn.Module):
    def __init__(self, rows: int, padded: int, width: int):
        super().__init__()
        self.quant_method = UnquantizedEmbeddingMethod()
        self.org_vocab_size, self.num_added_embeddings, self.tp_size = rows, 0, 1
        self.weight = torch.nn.Parameter(torch.zeros(padded, width), requires_grad=False)
        self.cpu_linear = object()


class Norm(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width), requires_grad=False)


class LlamaForCausalLM(torch.nn.Module):
    """vocabulary 10 padded to 16, width 4, one layer: qkv (4 + 2 + 2 rows, with bias) and o_proj."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, tied: bool = False):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = Embedding(10, 16, 4)
        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Module()
        layer.self_attn.qkv_proj = Linear([4, 2, 2], 4, bias=True)
        layer.self_attn.o_proj = Linear([4], 4)
        layer.input_layernorm = Norm(4)
        self.model.layers = torch.nn.ModuleList([layer])
        self.model.norm = Norm(4)
        self.lm_head = Embedding(10, 16, 4)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight


def _state(tied: bool = False) -> dict[str, torch.Tensor]:
    p = "model.layers.0."
    state = {"model.embed_tokens.weight": torch.randn(10, 4)}
    for name, rows in (("q_proj", 4), ("k_proj", 2), ("v_proj", 2)):
        state[f"{p}self_attn.{name}.weight"] = torch.randn(rows, 4)
        state[f"{p}self_attn.{name}.bias"] = torch.randn(rows)
    state.update({f"{p}self_attn.o_proj.weight": torch.randn(4, 4), f"{p}input_layernorm.weight": torch.randn(4),
                  "model.norm.weight": torch.randn(4), "lm_head.weight": torch.randn(10, 4)})
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def test_plan_places_a_whole_state():
    from actors.cpu_reload import plan

    model, state = LlamaForCausalLM(), _state()
    placed = plan(model, list(state.items()))
    assert placed is not None
    qkv, o = placed.linears
    p = "model.layers.0.self_attn."
    assert qkv.module is model.model.layers[0].self_attn.qkv_proj and o.module is model.model.layers[0].self_attn.o_proj
    assert [t is state[f"{p}{n}.weight"] for t, n in zip(qkv.parts, ("q_proj", "k_proj", "v_proj"))] == [True] * 3
    assert [t is state[f"{p}{n}.bias"] for t, n in zip(qkv.bias, ("q_proj", "k_proj", "v_proj"))] == [True] * 3
    assert o.bias == [None]
    assert len(placed.copies) == 4  # embeddings, two norms, the untied head
    assert {id(m) for m in placed.heads} == {id(model.model.embed_tokens), id(model.lm_head)}


def test_plan_writes_a_tied_head_once():
    from actors.cpu_reload import plan

    model, state = LlamaForCausalLM(tied=True), _state(tied=True)
    placed = plan(model, list(state.items()))
    assert placed is not None and len(placed.copies) == 3
    assert placed.copies[0][1] is state["model.embed_tokens.weight"]
    assert {id(m) for m in placed.heads} == {id(model.model.embed_tokens), id(model.lm_head)}
    without_head = {k: v for k, v in state.items() if k != "lm_head.weight"}
    assert plan(model, list(without_head.items())) is not None


def test_plan_refuses_what_it_cannot_place_exactly():
    from actors.cpu_reload import plan

    p = "model.layers.0.self_attn."
    state = _state()

    def refused(changed: dict, model: torch.nn.Module | None = None) -> bool:
        items = [(k, v) for k, v in {**state, **changed}.items() if v is not None]
        return plan(model or LlamaForCausalLM(), items) is None

    assert not refused({})
    assert refused({f"{p}k_proj.weight": None})  # a fused layer missing a part
    assert refused({f"{p}k_proj.bias": None})  # ... or a part's bias
    assert refused({f"{p}o_proj.bias": torch.zeros(4)})  # a bias for a layer without one
    assert refused({f"{p}q_proj.weight": torch.randn(4, 5)})  # another shape
    assert refused({"model.norm.weight": None})  # a parameter left out
    assert refused({"model.extra.weight": torch.zeros(4)})  # a name the model lacks
    assert refused({"model.embed_tokens.weight": torch.randn(9, 4)})  # another vocabulary
    assert refused({"model.norm.weight": torch.randn(4, dtype=torch.float64).to("meta")})  # another device
    loader = LlamaForCausalLM()
    loader.model.norm.weight.weight_loader = lambda param, value: param.data.copy_(value + 1)
    assert refused({}, loader)  # a parameter vLLM loads its own way
    kept = LlamaForCausalLM()
    kept.model.layers[0].self_attn.o_proj.weight = torch.nn.Parameter(torch.zeros(4, 4), requires_grad=False)
    assert refused({}, kept)  # a layer whose kernel reads the weight it keeps (not repacked)
    other = type("GPT2LMHeadModel", (LlamaForCausalLM,), {})()
    assert refused({}, other)  # a model class whose loader may transpose or permute
