"""No shared filesystem assumed: ``cluster.ship_files=always`` on one machine.

A 2-step GRPO run (two ZeRO-2 learners, one vLLM generator) on the tiny model, through
``python -m rlhf.run`` in a subprocess. The model folder is given by path; every actor must load
the copy the driver shipped through Ray's object store (``actors.files``), not that path, and
the final model and the checkpoint (both ranks' files) must land in ``--output-dir`` complete
and loadable, written there by the driver; ``--resume`` must hand the learners the checkpoint
through Ray too (each rank reads a node-local copy, never the driver's folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actors.files import pack_folder, shipped_root

pytestmark = pytest.mark.integration


def loaded_paths(stdout: str, who: str) -> list[str]:
    found = re.findall(rf"^{who} loaded the model from (.+)$", stdout, flags=re.MULTILINE)
    assert found, f"no '{who} loaded the model from' line in:\n{stdout[-3000:]}"
    return [p.strip() for line in found for p in line.split(", ")]


def test_grpo_run_ships_the_model_in_and_the_outputs_back(tiny_model, tmp_path):
    given = tmp_path / "given-model"
    shutil.copytree(tiny_model, given)
    out = tmp_path / "run"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.run", "--algo", "grpo", "--max-steps", "2", "--output-dir", str(out),
         "--model", str(given), "cluster.ship_files=always", "train.num_learners=2", "train.zero_stage=2",
         "data.size=16", "generator.prompts_per_step=4", "generator.n=4", "generator.max_tokens=8",
         "progress=false"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cluster.ship_files=always: the model folder" in proc.stdout

    # every actor loaded the shipped copy: the same files, another folder, none of them the given path
    shipped = loaded_paths(proc.stdout, "learner rank 0") + loaded_paths(proc.stdout, "generators")
    try:
        for path in shipped:
            assert Path(path) != given and Path(path).parent == shipped_root()
            assert pack_folder(path) == pack_folder(given)

        # the final model: written on the driver from the bytes rank 0 sent, complete and loadable
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf.checkpoint import is_complete, latest_complete, load_rng, load_state

        model_dir = out / "model"
        assert is_complete(model_dir)
        AutoModelForCausalLM.from_pretrained(model_dir)
        AutoTokenizer.from_pretrained(model_dir)
        assert json.loads((out / "summary.json").read_text())["model"] == str(model_dir)

        # the checkpoint: both ranks' DeepSpeed files and RNG, the driver's state, marked complete
        checkpoint = latest_complete(out)
        assert checkpoint is not None and checkpoint.name == "step-2"
        names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
        for rank in (0, 1):
            assert f"learner/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in names, names
            assert load_rng(checkpoint, f"learner-{rank}")
        assert "learner/mp_rank_00_model_states.pt" in names
        assert load_state(checkpoint).global_step == 2

        # --resume: the learners read the checkpoint from a copy shipped through Ray, not the driver's folder
        resumed = subprocess.run(
            [sys.executable, "-m", "rlhf.run", "--resume", str(out), "--max-steps", "3"],
            capture_output=True, text=True, timeout=600, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        shipped += loaded_paths(resumed.stdout, "learner rank 0") + loaded_paths(resumed.stdout, "generators")
        found = re.findall(r"^learners read the checkpoint from (.+) \(shipped through Ray\)$", resumed.stdout,
                           flags=re.MULTILINE)
        assert found, resumed.stdout[-3000:]
        read = [Path(p) for p in found[0].split(", ")]
        assert len(read) == 2 and all(out not in p.parents and p != checkpoint for p in read), read
        assert not any(p.exists() for p in read)  # the scratch copies are gone after loading
        assert latest_complete(out).name == "step-3" and load_state(latest_complete(out)).global_step == 3
    finally:
        for path in set(shipped):
            shutil.rmtree(path, ignore_errors=True)
