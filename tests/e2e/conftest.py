"""``run_cli``: run ``python -m rlhf.run`` in a subprocess, offline, and return the finished process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf.run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def run_cli():
    return _run_cli
