"""End to end: a real two-step run on the tiny model, then ``python -m rlhf.report`` on its folder."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_report_of_a_real_offline_run(tiny_model, tmp_path, run_cli):
    out = tmp_path / "simpo"
    proc = run_cli("--algo", "simpo", "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=24", "data.eval_size=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "rlhf.report", str(out)], capture_output=True, text=True,
                            timeout=180)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "| algorithm | simpo |" in text and "held-out accuracy" in text and str(out / "model") in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "report/loss.png" in images and "report/lr.png" in images
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
