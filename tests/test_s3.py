"""A full small run stored on s3:// in a real S3 API server on loopback (moto), read back by
DuckDB through fsspec/s3fs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from pipeline_helpers import REPO, cli, hooks_env, write_config

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SOLRL_S3_ENDPOINT": endpoint,
    }
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
                raise RuntimeError("moto server did not start") from None
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
    """(the S3 settings: the fixture puts them in this process's environment too)"""
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
    n = con.sql(
        "SELECT count(*) FROM read_parquet('s3://solrl-test/runs/s3run/iter=*/regenerate/*.parquet', hive_partitioning = true)"
    ).fetchall()[0][0]
    assert n == 2 * 2 * 4
    # nothing lives on the local disk (the CLI ran in the checkout)
    assert not (REPO / "runs" / "s3run").exists() and not (REPO / "s3:").exists()


class Outage:
    """A TCP relay in front of the S3 server: `down()` closes it (connections refused, open ones
    cut), `up()` listens again on the same port — an endpoint outage, with the data kept."""

    def __init__(self, target: int):
        import threading

        self.target, self.port, self.lock = target, _free_port(), threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener = None
        self.up()

    def up(self) -> None:
        import threading

        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        self.listener.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, listener) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_endpoint_outage_mid_stage_then_resume_is_byte_identical(s3_server, tmp_path):
    """The S3 endpoint goes away for a few seconds in the middle of explore: the run either rides
    it out (Prefect retries the storage operation) or stops with one sentence; a resume then
    completes with the artifacts of a run that never saw an outage."""
    import s3fs
    from pipeline_helpers import REPO, SOL_RL, fingerprint

    cfg = write_config(tmp_path / "tiny.yaml", run={"iterations": 1})
    cli("run", cfg, "--run-id", "ref", "--run-root", tmp_path, "--no-prefect")
    target = int(s3_server["SOLRL_S3_ENDPOINT"].rsplit(":", 1)[1])
    relay = Outage(target)
    env = hooks_env(
        pause_s=1,
        match="iter=00000/explore/",
        base={**os.environ, **s3_server, "SOLRL_S3_ENDPOINT": f"http://127.0.0.1:{relay.port}"},
    )
    proc = subprocess.Popen(
        [*SOL_RL, "run", str(cfg), "--run-id", "cut", "--run-root", "s3://solrl-test/outage"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["SOLRL_S3_ENDPOINT"]}, skip_instance_cache=True)
    deadline = time.time() + 300
    while not fs.exists("solrl-test/outage/cut/iter=00000/explore/part-00000.parquet"):
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read() if proc.poll() is not None else "no explore part"
        )
        time.sleep(0.2)  # polling the bucket (directly, not through the relay)
        fs.invalidate_cache()
    relay.down()
    time.sleep(3)  # the outage: the endpoint unreachable for 3 s mid-explore
    relay.up()
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:  # it stopped: one sentence, exit 1 (the environment), then a resume
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
        cli("run", cfg, "--run-id", "cut", "--run-root", "s3://solrl-test/outage", env=env)
    os.environ["SOLRL_S3_ENDPOINT"] = s3_server["SOLRL_S3_ENDPOINT"]
    assert fingerprint("s3://solrl-test/outage/cut") == fingerprint(tmp_path / "ref")
    relay.down()
