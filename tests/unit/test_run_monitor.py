"""The bench's run monitor: a timed run is watched without memory samples, a memory run with them."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from run_monitor import RunMonitor  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")

CHILD = "import sys, time; x = bytearray(b'1') * (64 << 20); print('step', flush=True); time.sleep(1.0)"


def _watch(tmp_path: Path, interval: float | None) -> tuple[RunMonitor, float]:
    log = tmp_path / "out.txt"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=out)
        monitor = RunMonitor(proc.pid, "unit", started, watch_file=log, interval=interval, poll=0.01).start()
        proc.wait(timeout=30)
    monitor.stop()
    return monitor, started


def test_timed_run_takes_no_memory_samples_but_sees_its_first_line(tmp_path):
    monitor, started = _watch(tmp_path, None)
    assert monitor.report() == {"memory_sampled": False}
    assert monitor.samples == 0
    assert monitor.first_line_wall is not None and monitor.first_line_wall >= started


def test_memory_run_samples_the_peak(tmp_path):
    monitor, _ = _watch(tmp_path, 0.05)
    report = monitor.report()
    assert report["memory_sampled"] is True
    assert report["memory_samples"] >= 5
    assert report["peak_pss_bytes"] > 64 << 20  # the child's 64 MiB buffer, written, is its own
    assert report["peak_processes"][0]["pid"] > 0
