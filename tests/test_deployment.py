"""The deployment path: a real `prefect server` on a free loopback port, a process work pool,
`prefect deploy --all` from prefect.yaml, `prefect deployment run sol-rl/shapes` with a small
parameter override, and `prefect worker start --run-once` executing it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import REPO, TINY, row_counts

pytestmark = pytest.mark.timeout(900)
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--analytics-off"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(
                    "prefect server did not start:\n" + (home / "server.log").read_text()[-3000:]
                ) from None
            time.sleep(0.3)
    yield env
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _prefect(env, *args, timeout=300):
    p = subprocess.run(
        [*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert p.returncode == 0, f"prefect {' '.join(args)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_deploy_and_run_shapes_through_a_worker(server, tmp_path):
    _prefect(server, "work-pool", "create", "sol-rl-process", "--type", "process")
    out = _prefect(server, "--no-prompt", "deploy", "--all")
    for name in ("shapes", "flux", "sd35", "sana"):
        assert f"sol-rl/{name}" in out
    overrides = {f"{s}.{k}": v for s, d in TINY.items() for k, v in d.items() if s != "run"}
    params = {"run_id": "deployed", "iterations": 1, "run_root": str(tmp_path), "overrides": overrides}
    out = _prefect(server, "deployment", "run", "sol-rl/shapes", "--params", json.dumps(params))
    assert "Created flow run" in out
    _prefect(server, "worker", "start", "--pool", "sol-rl-process", "--run-once", timeout=600)
    run = Path(tmp_path) / "deployed"
    counts = row_counts(run)
    assert counts["iter=00000/regenerate"] == 2 * 4 and counts["iter=00000/update"] == 1
    req = urllib.request.Request(
        server["PREFECT_API_URL"] + "/flow_runs/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    runs = json.loads(urllib.request.urlopen(req, timeout=30).read())
    by_flow = {}
    for r in runs:
        by_flow.setdefault(r["state_type"], []).append(r["name"])
    assert set(by_flow) == {"COMPLETED"}, by_flow  # the deployment's run and its iteration subflow
    assert len(runs) == 2
    req = urllib.request.Request(
        server["PREFECT_API_URL"] + "/artifacts/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    arts = {a["key"]: a for a in json.loads(urllib.request.urlopen(req, timeout=30).read())}
    assert arts["deployed-iter-0-selection"]["type"] == "table"
    assert len(json.loads(arts["deployed-iter-0-selection"]["data"])) == 2 * 4
    assert "train reward" in arts["deployed-iter-0-summary"]["data"]
