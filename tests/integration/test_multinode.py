"""Placement per role on a real two-node Ray cluster on this machine.

``examples/ray_job/local_cluster.py`` starts two ``ray start --block`` nodes (token auth on): the head
with the custom resource ``node_a`` and a second node with ``node_b``. A 2-step GRPO run on the
tiny model then pins the learners to ``node_a`` and the vLLM generator to ``node_b`` through
``cluster.<role>.resources``; ``summary.json`` must place them on different nodes. A request no
node can meet fails within ``cluster.timeout_s`` naming what was asked and what the nodes have.
Every process the cluster started is ended by pid (and checked gone) at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actors.placement import RoleResources, default_resources, role_resources
from rlhf.config import build_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.size=16", "generator.prompts_per_step=4", "generator.n=4", "generator.max_tokens=8", "progress=false"]


def local_cluster_module():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "examples" / "ray_job" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- resources per role (no cluster) ------------------------------------------------------------

def test_role_resources_defaults_and_overrides():
    cfg = build_config("grpo", overrides=["train.num_cpus_per_actor=3", "generator.num_engines=1"])
    assert role_resources(cfg, "learner", "cpu") == RoleResources(3.0, 0.0, {}, "PACK")
    assert role_resources(cfg, "reference", "cuda").num_gpus == 1.0
    assert default_resources(cfg, "generator", "cpu").num_cpus == float(max(1, os.cpu_count() or 1))
    cfg = build_config("grpo", overrides=["cluster.learner.num_gpus=0.5", "cluster.generator.num_gpus=0.5",
                                          "cluster.learner.resources={node_a: 1}", "cluster.learner.strategy=SPREAD",
                                          "cluster.generator.num_cpus=0"])
    learner = role_resources(cfg, "learner", "cuda")
    assert (learner.num_gpus, dict(learner.resources), learner.strategy) == (0.5, {"node_a": 1.0}, "SPREAD")
    assert learner.bundle() == {"CPU": learner.num_cpus, "GPU": 0.5, "node_a": 1.0}
    generator = role_resources(cfg, "generator", "cuda")
    assert generator.bundle() == {"GPU": 0.5}  # a resource of 0 is left out of the bundle
    assert generator.options() == {"num_cpus": 0.0, "num_gpus": 0.5}
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        role_resources(cfg, "critic", "cpu")


# -- bounded waits and node ids on the session's local cluster ----------------------------------

def test_unmet_request_fails_in_bounded_time_naming_ask_and_nodes(ray_cluster):
    from actors.placement import place

    started = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        place("generator", 2, RoleResources(1.0, 0.0, {"node_z": 1.0}), timeout_s=2)
    assert time.monotonic() - started < 30
    text = str(err.value)
    assert "generator: waited 2 s for 2 x {'CPU': 1.0, 'node_z': 1.0} (2 CPU, 2 node_z, strategy PACK)" in text
    assert "cluster has" in text and "on 1 node(s)" in text and "no node has node_z" in text


def _wait_dead(ray_module: Any, handle: Any, timeout_s: float = 60.0) -> None:
    """Return once ``handle``'s actor no longer answers (killed), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray_module.get(handle.ping.remote(), timeout=10)
        except ray_module.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor still answers {timeout_s:g} s after ray.kill")


def test_actor_nodes_report_where_each_actor_runs(ray_cluster):
    from actors.group import ActorGroup
    from actors.placement import actor_nodes, place

    class Probe:
        def ping(self) -> int:
            return 1

    group = ActorGroup(Probe, 2, lambda rank: (), num_cpus=0.5, name="probe", timeout_s=60)
    placement = place("solo", 1, RoleResources(0.5), timeout_s=60)
    (solo,) = placement.launch(Probe, lambda rank: ())
    try:
        here = ray_cluster.get_runtime_context().get_node_id()
        assert group.nodes("learner") == [{"role": "learner", "rank": r, "node_id": here} for r in range(2)]
        assert actor_nodes({"reference": [solo]}, timeout_s=60) == [{"role": "reference", "rank": 0, "node_id": here}]
        ray_cluster.kill(solo)  # a dead actor does not fail a finished run's summary
        _wait_dead(ray_cluster, solo)  # kill() is asynchronous: a call queued just after may still run
        (dead,) = actor_nodes({"reference": [solo]}, timeout_s=60)
        assert dead["node_id"] is None and "ActorDiedError" in dead["error"]
    finally:
        group.shutdown()
        ray_cluster.kill(solo)
        placement.release()


def test_two_threads_calling_a_group_reach_every_rank_in_the_same_order(ray_cluster):
    """Generation ahead (a thread that may re-sync weights) and the training loop both fan calls out
    to the learner ranks: each call reaches every rank in one order, or collectives would cross."""
    import threading

    from actors.group import ActorGroup

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def note(self, tag: str) -> None:
            self.seen.append(tag)

        def log(self) -> list[str]:
            return self.seen

    group = ActorGroup(Recorder, 3, lambda rank: (), num_cpus=0.1, name="recorder", timeout_s=60)
    try:
        def submit(thread: str) -> None:
            for i in range(300):
                group.call_async("note", f"{thread}{i}")

        threads = [threading.Thread(target=submit, args=(t,)) for t in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logs = group.call("log")
        assert len(logs[0]) == 600 and logs[1] == logs[0] and logs[2] == logs[0]
    finally:
        group.shutdown()


# -- a real two-node cluster --------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    lc = local_cluster_module()
    cluster = lc.start(tmp_path_factory.mktemp("cluster"), num_cpus=4, dashboard=False)
    yield cluster
    cluster.stop()
    assert not lc._marked(cluster.marker), "a process of the test cluster outlived stop()"


def run_on(cluster, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf.run", *args, f"ray_address={cluster.address}"],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_learners_and_generators_on_the_nodes_asked_for(two_nodes, tiny_model, tmp_path):
    out = tmp_path / "grpo"
    proc = run_on(two_nodes, "--algo", "grpo", "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                  "cluster.learner.resources={node_a: 1}", "cluster.generator.resources={node_b: 1}",
                  "cluster.timeout_s=120", *SMALL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    nodes = {role: {a["node_id"] for a in summary["placement"] if a["role"] == role}
             for role in ("learner", "generator")}
    assert [(a["role"], a["rank"]) for a in summary["placement"]] == [("learner", 0), ("generator", 0)]
    assert len(nodes["learner"]) == len(nodes["generator"]) == 1
    assert nodes["learner"] != nodes["generator"]
    assert (out / "model" / "model.safetensors").is_file()


def test_a_resource_no_node_has_fails_fast_with_what_the_nodes_have(two_nodes, tiny_model, tmp_path):
    started = time.monotonic()
    proc = run_on(two_nodes, "--algo", "grpo", "--max-steps", "1", "--output-dir", str(tmp_path / "x"),
                  "--model", tiny_model, "cluster.generator.resources={node_c: 1}", "cluster.timeout_s=5", *SMALL,
                  timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - started < 150
    assert "generator: waited 5 s for 1 x" in proc.stderr and "no node has node_c" in proc.stderr, proc.stderr[-3000:]
    assert "node_a: 8" in proc.stderr and "node_b: 8" in proc.stderr  # what each node has
