"""A full small run stored on s3:// in a real S3 API server on loopback (moto), read back by
DuckDB through fsspec/s3fs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline_helpers import cli, write_config

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "SOLRL_S3_ENDPOINT": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import urllib.request

    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir("solrl-test")
    yield env
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_run_on_s3_then_duckdb_reads_it(s3_server, tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", run={"iterations": 2})
    cli("run", cfg, "--run-id", "s3run", "--run-root", "s3://solrl-test/runs", "--no-prefect", env=s3_server)
    assert "OK" in cli("verify", "s3run", "--run-root", "s3://solrl-test/runs", env=s3_server).stdout
    ranking = cli("inspect", "s3run", "-i", "1", "--run-root", "s3://solrl-test/runs", env=s3_server).stdout
    assert "top" in ranking

    from storage.queries import connect, read_stage, seed_ranking
    from storage.store import RunStore

    store = RunStore("s3://solrl-test/runs/s3run")
    assert store.iterations() == [0, 1]
    explore = read_stage(store, 1, "explore", "prompt_id, seed, reward")
    assert explore.num_rows == 2 * 8
    table = seed_ranking(store, 1)
    assert table.num_rows == 16 and sum(r is not None for r in table.column("regenerated_reward").to_pylist()) == 8
    con = connect(store)
    n = con.sql("SELECT count(*) FROM read_parquet('s3://solrl-test/runs/s3run/iter=*/regenerate/*.parquet', hive_partitioning = true)").fetchall()[0][0]
    assert n == 2 * 2 * 4
    # nothing lives on the local disk
    assert not (tmp_path / "runs").exists()
