"""A two-node Ray cluster on one machine, to try the multi-node recipe (and test it) without a cluster.

Two ``ray start --block`` processes: a head node with the custom resource ``node_a`` and a second
node with ``node_b``, each with its own temp folder (as on two machines: a node's runtime-env
agent deletes unpacked ``working_dir`` copies it no longer uses, which must not be the other
node's), both on loopback, token authentication on (a fresh token in the state
folder), the dashboard and job server at ``http://127.0.0.1:<port>``. Every process of the cluster
carries one marker variable in its environment, so ``stop`` ends exactly this cluster's processes
(by the recorded process groups, then by that marker) and never another Ray on the machine.

    python examples/ray_job/local_cluster.py start --dir /tmp/rlhf-cluster   # prints the env to export
    python examples/ray_job/local_cluster.py stop --dir /tmp/rlhf-cluster

From Python: ``cluster = start(folder)`` ... ``cluster.stop()``; ``cluster.env`` holds what a client
(``ray job submit``, ``python -m rlhf.run ray_address=...``) needs: ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MARKER = "RLHF_LOCAL_CLUSTER"  # env var every process of one cluster carries (its value is unique)
READY = "Ray runtime started"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_command() -> list[str]:
    """The ``ray`` CLI of this Python environment."""
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class LocalCluster:
    """A running cluster: ``address`` (GCS, for ``ray_address=``), ``dashboard`` (for ``ray job submit``)."""

    folder: str
    address: str
    dashboard: str
    marker: str
    temp_dirs: list[str] = field(default_factory=list)  # one per node
    env: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)  # the `ray start --block` processes, each its own group

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """End this cluster's processes; returns the pids that needed SIGKILL. Safe to call twice."""
        return stop(self, timeout_s)

    def save(self) -> Path:
        path = Path(self.folder) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LocalCluster:
        return cls(**json.loads((Path(folder) / "cluster.json").read_text()))


def _wait_for(log: Path, proc: subprocess.Popen, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if READY in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; its log ({log}):\n{text[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not start within {timeout_s:g} s; log: {log}")


def start(folder: str | os.PathLike, num_cpus: int = 4, resources: tuple[str, str] = ("node_a", "node_b"),
          dashboard: bool = True, object_store_mb: int = 512, timeout_s: float = 120.0,
          extra_env: dict[str, str] | None = None) -> LocalCluster:
    """Start the head (custom resource ``resources[0]``) and a second node (``resources[1]``).

    Each node gets ``num_cpus`` logical CPUs and 8 units of its custom resource (so up to eight
    actors asking ``{node_a: 1}`` fit). Every port is picked free; ``folder`` holds the token, the
    node logs and ``cluster.json`` (what ``stop`` reads).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    temp_dirs = [tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp") for _ in resources]  # short: socket paths
    marker = secrets.token_hex(8)
    port, dash_port = free_port(), free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    node_env = {**os.environ, **env, **(extra_env or {}), MARKER: marker,
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a stopped node ends at once (no drain wait)
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0",
              "--object-store-memory", str(object_store_mb << 20), "--disable-usage-stats"]
    head = [*ray_command(), "start", "--head", "--port", str(port), "--include-dashboard", str(dashboard).lower(),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--resources", json.dumps({resources[0]: 8}), "--temp-dir", temp_dirs[0], *common]
    worker = [*ray_command(), "start", "--address", f"127.0.0.1:{port}",
              "--dashboard-agent-listen-port", str(free_port()), "--resources", json.dumps({resources[1]: 8}),
              "--temp-dir", temp_dirs[1], *common]
    cluster = LocalCluster(str(folder), f"127.0.0.1:{port}", f"http://127.0.0.1:{dash_port}", marker, temp_dirs, env)
    try:
        for name, cmd in (("head", head), ("node2", worker)):
            log = folder / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=node_env,
                                        start_new_session=True)
            cluster.pids.append(proc.pid)
            cluster.save()
            _wait_for(log, proc, f"ray start ({name})", timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _marked(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it (no zombie left behind)
        return done == pid
    except ChildProcessError:  # not our child (``stop`` from another process): is it still there?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def stop(cluster: LocalCluster, timeout_s: float = 30.0) -> list[int]:
    """SIGTERM each recorded ``ray start --block`` process, the second node first (each ends its
    node's processes), then SIGKILL whatever still carries the cluster's marker. Returns the pids
    that needed SIGKILL."""
    deadline = time.monotonic() + timeout_s
    for pid in reversed(cluster.pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        while not _exited(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    while time.monotonic() < deadline and _marked(cluster.marker):
        time.sleep(0.2)
    left = _marked(cluster.marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in cluster.pids:
        _exited(pid)
    cluster.pids = []
    for temp_dir in cluster.temp_dirs:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", default="/tmp/rlhf-cluster", help="token, logs and cluster.json")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs per node")
    args = parser.parse_args(argv)
    if args.action == "stop":
        left = LocalCluster.load(args.dir).stop()
        print(f"stopped{f' (killed {len(left)} stuck process(es))' if left else ''}")
        return 0
    cluster = start(args.dir, num_cpus=args.num_cpus)
    cluster.save()
    print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.env['RAY_AUTH_TOKEN_PATH']}")
    print(f"# GCS address (ray_address=...): {cluster.address}")
    print(f"# dashboard / job server (ray job submit --address ...): {cluster.dashboard}")
    print(f"# stop: python {__file__} stop --dir {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
