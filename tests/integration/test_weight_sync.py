"""Learner -> generator weight sync, every transport, on the tiny Llama with real vLLM engines.

The sender is a small Ray actor holding a transformers copy of the model and using
``WeightSenderMixin`` exactly as the learner does; it is perturbed with a seeded noise that this
test reproduces locally, so the expected log-probs come from transformers with the same weights.
"""

from __future__ import annotations

import glob
import os
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.integration

TIMEOUT = 180
TEXTS = ["What is 2 + 3?", "The quick brown fox", "State the final answer: 4 + 3 =", "Hello, world!"]
GREEDY = {"n": 1, "temperature": 0.0, "max_tokens": 8}


def _perturbed(state: dict, seed: int) -> dict:
    """``state`` plus N(0, 0.05^2) noise from ``seed`` (the weights themselves have std 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


class HFSender:
    """A learner stand-in: ``rank`` and ``iter_state()`` over a transformers model, plus ``perturb``.

    Like the learner with ZeRO 0-2, ``copy=False`` gives views of the live parameters.
    """

    rank = 0

    def __init__(self, model_path: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.base = {k: v.clone() for k, v in self.model.state_dict().items()}

    def perturb(self, seed: int) -> None:
        self.model.load_state_dict(_perturbed(self.base, seed))

    def iter_state(self, device: str = "cpu", copy: bool = True):
        return ((k, v.to(device, copy=copy)) for k, v in self.model.state_dict().items())


def _sender_actor(ray, model_path: str):
    """Start ``HFSender`` with ``WeightSenderMixin`` (this module travels by value: workers can't import it)."""
    from actors.weight_sync import WeightSenderMixin

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sender_cls = type("HFSender", (HFSender, WeightSenderMixin), {})
    return ray.remote(sender_cls).options(num_cpus=1).remote(model_path)


@pytest.fixture(scope="module")
def env(ray_cluster, tiny_model):
    """Two generators, one sender, the local reference model and the greedy output before any sync."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.generator import GeneratorActor

    config = {"model_path": tiny_model, "max_model_len": 128, "kv_cache_bytes": 128 << 20}
    gens = [ray_cluster.remote(GeneratorActor).options(num_cpus=1).remote(i, config) for i in range(2)]
    sender = _sender_actor(ray_cluster, tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    before = ray_cluster.get([g.generate.remote(prompts, GREEDY) for g in gens], timeout=TIMEOUT)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    yield {"gens": gens, "sender": sender, "prompts": prompts, "before": before, "model": model, "base": base}
    for actor in [*gens, sender]:
        ray_cluster.kill(actor)


def _hf_logps(model, prompt: list[int], completion: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion token: its log-prob and the argmax token id, under ``model`` (fp32)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].float(), dim=-1)[len(prompt) - 1 : -1]
    return logps.gather(-1, ids[0, len(prompt) :, None])[:, 0], logps.argmax(-1)


def _check_serves(env, ray, state: dict, version: int) -> None:
    """Both generators serve ``state``: greedy tokens and log-probs equal transformers', not the old ones."""
    model, prompts = env["model"], env["prompts"]
    results = ray.get([g.generate.remote(prompts, GREEDY) for g in env["gens"]], timeout=TIMEOUT)
    for result, before in zip(results, env["before"]):
        changed = False
        for prompt, [sample], [old] in zip(prompts, result, before):
            assert sample["version"] == version
            ids = sample["completion_ids"]
            model.load_state_dict(state)
            new_logps, new_argmax = _hf_logps(model, prompt, ids)
            model.load_state_dict(env["base"])
            old_logps, _ = _hf_logps(model, prompt, ids)
            assert torch.tensor(sample["logps"]) == pytest.approx(new_logps, abs=1e-4)
            assert ids == new_argmax.tolist()  # greedy under the new weights
            assert (torch.tensor(sample["logps"]) - old_logps).abs().max() > 1e-2
            changed = changed or ids != old["completion_ids"]
        assert changed  # greedy generation follows the new weights


BACKENDS = ["object_store", "broadcast", "shared_memory"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_makes_generators_serve_new_weights(ray_cluster, env, backend):
    from actors.weight_sync import SyncStats, make_transport

    transport = make_transport(backend, timeout_s=60, bucket_mb=0.1)  # broadcast: several buckets even here
    transport.setup([env["sender"]], env["gens"])
    try:
        base = env["base"]
        expected_bytes = sum(v.numel() * v.element_size() for v in base.values())
        # two syncs in a row on the same prompts: the second must not be served from the prefix cache
        # (and shared_memory rewrites the same file in place, which the generators keep mapped)
        for seed in (1, 2):
            version = 10 * seed + BACKENDS.index(backend)
            ray_cluster.get(env["sender"].perturb.remote(seed), timeout=TIMEOUT)
            stats = transport.sync(version)
            assert isinstance(stats, SyncStats)
            assert (stats.tensors, stats.bytes) == (len(base), expected_bytes)
            assert 0 < stats.seconds < 60
            assert 0 < stats.phases["update"] <= stats.phases["load"] < stats.seconds
            assert stats.paths == ("direct", "direct")  # CPU engines take a whole state without vLLM's reload
            _check_serves(env, ray_cluster, _perturbed(base, seed), version)
        if backend == "shared_memory":  # the engines keep no view of the file: rewriting it changes nothing
            ray_cluster.get(env["sender"].perturb.remote(3), timeout=TIMEOUT)
            ray_cluster.get(env["sender"].write_shared_weights.remote(99), timeout=TIMEOUT)
            _check_serves(env, ray_cluster, _perturbed(base, 2), version)
    finally:
        transport.close()


def test_auto_picks_shared_memory_on_one_node_and_removes_its_file(ray_cluster, env):
    from actors.weight_sync import make_transport

    pid = ray_cluster.get(env["sender"].__ray_call__.remote(lambda _actor: os.getpid()), timeout=TIMEOUT)
    files = f"/dev/shm/rlhf-weights-{pid}-*"
    transport = make_transport("auto", timeout_s=60)
    transport.setup([env["sender"]], env["gens"])
    try:
        assert transport.backend == "shared_memory"
        ray_cluster.get(env["sender"].perturb.remote(4), timeout=TIMEOUT)
        transport.sync(40)
        assert len(glob.glob(files)) == 1
        _check_serves(env, ray_cluster, _perturbed(env["base"], 4), 40)
    finally:
        transport.close()
    assert glob.glob(files) == []


@pytest.mark.parametrize("backend", ["broadcast", "shared_memory"])
def test_tied_head_is_rebuilt_from_the_embeddings(ray_cluster, tiny_model, tmp_path, backend):
    """A tied model: ``lm_head.weight`` is not sent (it shares the embeddings); the generator rebuilds it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from actors.generator import GeneratorActor
    from actors.weight_sync import make_transport

    untied = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    untied.config.tie_word_embeddings = True
    model = LlamaForCausalLM(untied.config).eval()
    model.load_state_dict({k: v for k, v in untied.state_dict().items() if k != "lm_head.weight"}, strict=False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    base = {k: v.clone() for k, v in model.state_dict().items()}

    config = {"model_path": str(tmp_path), "max_model_len": 128, "kv_cache_bytes": 128 << 20}
    gen = ray_cluster.remote(GeneratorActor).options(num_cpus=1).remote(0, config)
    sender = _sender_actor(ray_cluster, str(tmp_path))
    transport = make_transport(backend, timeout_s=60)
    try:
        ray_cluster.get(sender.perturb.remote(3), timeout=TIMEOUT)
        transport.setup([sender], [gen])
        stats = transport.sync(1)
        assert stats.tensors == len(base) - 1  # lm_head.weight not sent
        assert stats.paths == ("direct",)
        model.load_state_dict(_perturbed(base, 3))  # the head keeps the last of the two noisy copies
        prompt = AutoTokenizer.from_pretrained(tiny_model)(TEXTS[0])["input_ids"]
        [[sample]] = ray_cluster.get(gen.generate.remote([prompt], GREEDY), timeout=TIMEOUT)
        logps, argmax = _hf_logps(model, prompt, sample["completion_ids"])
        assert torch.tensor(sample["logps"]) == pytest.approx(logps, abs=1e-4)
        assert sample["completion_ids"] == argmax.tolist()
    finally:
        transport.close()
        for actor in (gen, sender):
            ray_cluster.kill(actor)


def test_failures_name_the_actor(ray_cluster, env):
    """Hung, absent and dead generators: each error names the actor, within the configured timeout."""
    from actors.weight_sync import WeightSyncError, make_transport

    gens, sender, timeout = env["gens"], env["sender"], 3.0
    names = ["learner rank 0", "generator 0", "generator 1"]

    # hung: the group is formed but no generator receives -> learner rank 0 times out naming both
    broadcast = make_transport("broadcast", timeout_s=timeout)
    broadcast.setup([sender], gens)
    start = time.monotonic()
    with pytest.raises(Exception, match="generator 0, generator 1") as err:
        ray_cluster.get(sender.broadcast_weights.remote(99), timeout=TIMEOUT)
    assert "3s" in str(err.value) and time.monotonic() - start < timeout + 5
    broadcast.close()

    # absent: generator 1 never joins -> the group is not formed, and the error says who is missing
    host, port, secret = ray_cluster.get(sender.open_weight_group.remote(names[1:], timeout, "gloo"), timeout=TIMEOUT)
    join = gens[0].join_weight_group.remote(host, port, 1, names, timeout, "gloo", secret)
    refs = [sender.connect_weight_group.remote(), join]
    start = time.monotonic()
    with pytest.raises(Exception, match="never joined: generator 1"):
        ray_cluster.get(refs[0], timeout=TIMEOUT)
    with pytest.raises(Exception, match="generator 0: weight-sync group of 3 not formed within 3s"):
        ray_cluster.get(refs[1], timeout=TIMEOUT)
    assert time.monotonic() - start < timeout + 5

    # dead: generator 1 is killed after set-up -> each transport's sync names it
    transports = [make_transport(name, timeout_s=timeout) for name in BACKENDS]
    for transport in transports:
        transport.setup([sender], gens)
    ray_cluster.kill(gens[1])
    for version, transport in enumerate(transports, start=100):
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match=rf"weight sync v{version} .*generator 1 failed: the actor died"):
            transport.sync(version)
        assert time.monotonic() - start < timeout + 5
        transport.close()
    with pytest.raises(WeightSyncError, match="generator at position 1 failed: the actor died"):
        transports[0].setup([sender], gens)
    with pytest.raises(ValueError, match="unknown weight-sync transport 'nccl'; valid: auto, broadcast, object_store, "
                                         "shared_memory"):
        make_transport("nccl")


def test_wait_named_names_the_silent_and_the_failed():
    """The one wait helper on non-Ray pendings (store keys): silent ones by name, failures with their error."""
    from actors.weight_sync import WeightSyncError, wait_named

    class Key:
        def __init__(self, after_s: float | None, error: str | None = None):
            self.at = None if after_s is None else time.monotonic() + after_s
            self.error = error

        def done(self):
            return self.at is not None and time.monotonic() >= self.at

        def result(self):
            if self.error:
                raise WeightSyncError(self.error)
            return "ok"

    assert wait_named([("a", Key(0.0)), ("b", Key(0.05))], 2.0, "acks") == ["ok", "ok"]
    with pytest.raises(WeightSyncError, match=r"^acks: never joined: b, c$"):
        wait_named([("a", Key(0.0)), ("b", Key(None)), ("c", Key(None))], 0.2, "acks", silent="never joined")
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"^acks: b failed: bad bytes; still running: c$"):
        wait_named([("a", Key(0.0)), ("b", Key(0.0, "bad bytes")), ("c", Key(None))], 60, "acks", settle_s=0.2)
    assert time.monotonic() - start < 5
    assert wait_named([("a", Key(None))], 0.1, "close", strict=False) == [None]


def test_shared_file_is_rewritten_in_place_and_remade_when_the_layout_changes():
    """Learner-side writer on plain tensors: same layout -> same file; a new tensor -> a new file, old one gone."""
    from actors.weight_sync.endpoints import WeightSenderMixin
    from actors.weight_sync.shared_memory import SharedFile
    from actors.weight_sync.wire import unpack

    class Host(WeightSenderMixin):
        rank = 0
        state: dict = {}

        def iter_state(self, device="cpu", copy=True):
            return iter(self.state.items())

    host = Host()
    host.state = {"a": torch.arange(10, dtype=torch.float32), "b": torch.ones(3, 5, dtype=torch.bfloat16),
                  "c": torch.tensor([True, False])}
    first = host.write_shared_weights(1)
    host.state["a"] += 1
    second = host.write_shared_weights(2)
    assert second["path"] == first["path"] and second["entries"] == first["entries"]
    host.state["d"] = torch.full((7,), 3, dtype=torch.int64)
    third = host.write_shared_weights(3)
    assert third["path"] != first["path"] and not os.path.exists(first["path"])
    fourth = host.write_shared_weights(4, fresh=True)
    assert fourth["path"] != third["path"] and not os.path.exists(third["path"])
    reader = SharedFile(fourth["path"], fourth["size"])
    got = dict(unpack(reader.tensor, fourth["entries"]))
    assert list(got) == ["a", "b", "c", "d"] and fourth["tensors"] == 4
    for name, tensor in host.state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)
    del got
    reader.close()
    host.close_weight_group()
    assert not os.path.exists(fourth["path"])


@pytest.mark.parametrize("stage", [2, 3])
def test_learner_sends_what_it_would_save(ray_cluster, tiny_model, stage):
    """The real learner (2 ranks): the shared file holds exactly ``full_state_dict()`` (views under
    ZeRO 0-2, gathered copies under ZeRO-3; every rank takes part)."""
    from actors.group import start_learners
    from actors.weight_sync.shared_memory import SharedFile
    from actors.weight_sync.wire import unpack

    config = {"model_path": tiny_model, "zero_stage": stage, "seed": 0, "timeout_s": 120}
    group = start_learners(2, config, timeout_s=300)
    try:
        where, nothing = group.call("write_shared_weights", 1)
        assert nothing is None
        state = group.call("full_state_dict")[0]
        reader = SharedFile(where["path"], where["size"])
        got = dict(unpack(reader.tensor, where["entries"]))
        assert set(got) == set(state) - ({"lm_head.weight"} if "lm_head.weight" not in got else set())
        for name, tensor in got.items():
            assert torch.equal(tensor, state[name]), name
        del got, tensor
        reader.close()
        group.call("close_weight_group")
        assert not os.path.exists(where["path"])
    finally:
        group.shutdown()


def test_auto_falls_back_to_broadcast_across_nodes_and_on_gpu(monkeypatch):
    """A generator on another Ray node (or device cuda) -> broadcast; shared_memory refuses, naming it."""
    from actors.weight_sync import auto, base, make_transport, shared_memory

    nodes = {"learner rank 0": "node-a", "generator 0": "node-a", "generator 1": "node-b"}
    monkeypatch.setattr(base, "generator_names", lambda gens, _t: [f"generator {i}" for i in range(len(gens))])
    for module in (auto, shared_memory):
        monkeypatch.setattr(module, "placements", lambda named, _t: [(nodes[name], ()) for name, _ in named])
    with pytest.raises(ValueError, match="needs every generator on learner rank 0's node; generator 1 run elsewhere"):
        make_transport("shared_memory", timeout_s=5).setup(["learner"], ["g0", "g1"])

    chosen = []
    monkeypatch.setattr(auto.BroadcastTransport, "setup", lambda self, *_: chosen.append(("broadcast", self.backend)))
    monkeypatch.setattr(auto.SharedMemoryTransport, "setup", lambda self, *_: chosen.append(("shared_memory", None)))
    for device, gens in (("cpu", ["g0", "g1"]), ("cuda", ["g0"]), ("cpu", ["g0"])):
        transport = make_transport("auto", timeout_s=5, device=device)
        transport.setup(["learner"], gens)
        assert transport.backend == chosen[-1][0]
    assert chosen == [("broadcast", "gloo"), ("broadcast", "nccl"), ("shared_memory", None)]


def test_auto_choice_by_node_and_gpu():
    """One GPU shared by learner rank 0 and an engine -> shared_memory (NCCL needs one GPU per rank)."""
    from actors.weight_sync.auto import choose

    assert choose("cuda", ("a", ("0",)), [("generator 0", ("a", ("1",)))])[0] == "broadcast"
    backend, why = choose("cuda", ("a", ("0",)), [("generator 0", ("a", ("1",))), ("generator 1", ("a", ("0",)))])
    assert backend == "shared_memory" and why.startswith("generator 1 on learner rank 0's GPU")
    assert choose("cuda", ("a", ("0",)), [("generator 0", ("b", ("0",)))])[0] == "broadcast"  # same id, other node
    assert choose("cpu", ("a", ()), [("generator 0", ("a", ()))])[0] == "shared_memory"
    assert choose("cpu", ("a", ()), [("generator 0", ("b", ()))]) == ("broadcast", "generator 0 not on learner "
                                                                      "rank 0's node")


def test_weight_store_listens_on_the_cluster_address_and_needs_the_group_secret():
    """The store is bound to the node's cluster address only; a member without the secret never joins."""
    import socket

    from actors.weight_sync.broadcast import WeightGroup

    group, host, port, secret = WeightGroup.open_source(["generator 0"], 3.0, "gloo")
    try:
        assert len(secret) == 32
        if host not in ("127.0.0.1", "localhost"):
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
                pass  # nothing listens on loopback: the store is bound to the cluster address only
        outsider = WeightGroup.join.__func__  # a stranger who guesses the address but not the secret
        with pytest.raises(Exception, match="not formed within"):
            outsider(WeightGroup, host, port, 1, ["learner rank 0", "generator 0"], 2.0, "gloo", "wrong-secret")
        assert not group.store.check(["joined/1"])  # the source never saw it join
    finally:
        group.close()
