"""Submit ``python -m rlhf.run ...`` to a Ray cluster as a job, wait for it (bounded), print its logs.

The same as ``ray job submit --runtime-env examples/ray_job/runtime_env.yaml -- python -m rlhf.run ...``
through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``, needs ``ray[default]``),
with a time limit: a job still running after ``--timeout`` is stopped and this script exits 124.

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=~/.ray/auth_token   # the cluster's token
    python examples/ray_job/submit.py --address http://127.0.0.1:8265 --timeout 3600 -- \\
        python -m rlhf.run --config configs/grpo.yaml ray_address=auto --output-dir /data/runs/grpo \\
        cluster.learner.resources='{node_a: 1}' cluster.generator.resources='{node_b: 1}'

Run it from the repository root (``working_dir: .`` in the runtime env is the current folder).
Exit code: 0 when the job succeeded, 1 when it failed or was stopped, 124 on the time limit.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def load_runtime_env(path: str | Path, excludes: list[str] | None = None) -> dict:
    """The runtime env YAML, with ``excludes`` added to its own."""
    env = yaml.safe_load(Path(path).read_text()) or {}
    if excludes:
        env["excludes"] = [*env.get("excludes", []), *excludes]
    return env


def run_job(address: str, entrypoint: list[str], runtime_env: dict, timeout_s: float,
            poll_s: float = 2.0) -> tuple[str, str, str]:
    """Submit, wait at most ``timeout_s``; returns ``(submission_id, final status, logs)``.

    A job still running at the deadline is stopped and reported as ``TIMEOUT``.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
    print(f"submitted {job_id}: {shlex.join(entrypoint)}", flush=True)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not JobStatus(status).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            return job_id, "TIMEOUT", client.get_job_logs(job_id)
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
    return job_id, str(JobStatus(status).value), client.get_job_logs(job_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s [options] -- python -m rlhf.run ...")
    parser.add_argument("--address", default="http://127.0.0.1:8265", help="the cluster's dashboard / job server")
    parser.add_argument("--runtime-env", default=str(HERE / "runtime_env.yaml"), help="runtime env YAML")
    parser.add_argument("--exclude", action="append", default=[], help="another path to leave out of the upload")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the job is stopped")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        parser.error("give the command to run after --, e.g. -- python -m rlhf.run --algo grpo ray_address=auto")
    job_id, status, logs = run_job(args.address, entrypoint, load_runtime_env(args.runtime_env, args.exclude),
                                   args.timeout)
    print(logs, end="" if logs.endswith("\n") else "\n")
    print(f"job {job_id}: {status}", flush=True)
    if status == "TIMEOUT":
        return 124
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
