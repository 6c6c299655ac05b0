"""The multi-node recipe for real: ``examples/ray_job`` submits ``python -m rlhf.run`` as a Ray job.

A two-node cluster on this machine (``examples/ray_job/local_cluster.py``: two ``ray start`` nodes,
token auth, dashboard and job server on 127.0.0.1, custom resources ``node_a`` / ``node_b``);
``examples/ray_job/submit.py`` uploads the repository with ``runtime_env.yaml`` through the Ray
Jobs API and waits with a bound. The job must succeed with its learners on ``node_a`` and its
generator on ``node_b``, and leave the model in ``--output-dir``. Every process of the cluster is
ended by pid and checked gone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "ray_job"


def local_cluster_module():
    spec = importlib.util.spec_from_file_location("local_cluster", RECIPE / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ray_job_submit_places_learners_and_generators_on_their_nodes(tiny_model, tmp_path):
    pytest.importorskip("ray.dashboard.optional_deps", reason="the Ray job server needs ray[default] (the dev extra)")
    lc = local_cluster_module()
    cluster = lc.start(tmp_path / "cluster", num_cpus=4, dashboard=True)
    try:
        out = tmp_path / "grpo"
        run = ["python", "-m", "rlhf.run", "--config", "configs/grpo.yaml", "ray_address=auto", "--max-steps", "2",
               "--output-dir", str(out), "--model", tiny_model, "cluster.learner.resources={node_a: 1}",
               "cluster.generator.resources={node_b: 1}", "cluster.timeout_s=120", "data.size=16",
               "generator.prompts_per_step=4", "generator.n=4", "generator.max_tokens=8", "progress=false"]
        submit = [sys.executable, str(RECIPE / "submit.py"), "--address", cluster.dashboard, "--timeout", "240",
                  "--", *run]
        proc = subprocess.run(submit, capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, **cluster.env, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
        assert proc.stdout.rstrip().endswith("SUCCEEDED")
        summary = json.loads((out / "summary.json").read_text())
        nodes = {role: {a["node_id"] for a in summary["placement"] if a["role"] == role}
                 for role in ("learner", "generator")}
        assert len(nodes["learner"]) == len(nodes["generator"]) == 1, summary["placement"]
        assert nodes["learner"] != nodes["generator"]
        assert (out / "model" / "model.safetensors").is_file()
    finally:
        cluster.stop()
        assert not lc._marked(cluster.marker), "a process of the test cluster outlived stop()"
