"""Reliability under faults (issue: retries that never double-train, atomic commit records, a
run lease, clean stops): a storage fault or a SIGKILL at every write point of a small run, then a
resume, must give the artifacts of an uninterrupted run, byte for byte.

In-process and fork-based, so hundreds of faults cost seconds: the policy cache of this process
(tasks/cache.py) is exactly what a Prefect retry of a failed stage would find.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import fingerprint

from solrl.config import RunConfig
from storage import faults
from storage.lease import Lease, LeaseHeld
from storage.queries import read_stage
from tasks import stages
from tasks.errors import explain
from tasks.run import ConfigMismatch, RunDamaged, open_run
from tasks.status import verify

# micro models: one torch thread (and the fork-based kills need it)
pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("one_torch_thread")]

MICRO = {
    "run": {"seed": 5, "iterations": 1},
    "model": {"dtype": "float32"},
    "prompts": {"per_iteration": 2},
    "explore": {"n": 4, "steps": 1, "batch": 4},
    "select": {"k": 2},
    "rollout": {"steps": 2, "batch": 4},
    "nft": {"micro_batch": 4, "timestep_fraction": 0.5, "lr": 0.01},
    "eval": {"every": 1, "steps": 1, "held_out_prompts": 1, "train_prompts": 1, "seeds_per_prompt": 1},
    "fidelity": {"audit_prompts": 1},
}


def micro(**over) -> RunConfig:
    cfg = RunConfig.model_validate(MICRO)
    return cfg.with_overrides(**over) if over else cfg


def run_all(uri: str, cfg: RunConfig, iterations: int = 1) -> None:
    """What `sol-rl run --no-prefect` does: open, lease, every iteration, release."""
    run = open_run(uri, cfg)
    run.acquire()
    try:
        for i in range(iterations):
            stages.run_steps(run, i)
    finally:
        run.release()


def uncommitted(root: Path) -> list[str]:
    out = []
    for d in root.glob("iter=*/*"):
        rec = d / "_COMMITTED.json"
        listed = set(json.loads(rec.read_text())["files"]) if rec.exists() else set()
        out += [
            str(f)
            for f in d.rglob("*")
            if f.is_file() and f.name != "_COMMITTED.json" and str(f.relative_to(d)) not in listed
        ]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted micro run (one iteration, with the baseline, an audit and an eval), its
    fingerprint, and the list of its write operations."""
    root = tmp_path_factory.mktemp("ref")
    log = root / "ops.log"
    faults.install(f"write:0:count:{log}")
    try:
        run_all(str(root / "run"), micro())
    finally:
        faults.uninstall()
    ops = [ln.split(" ", 1)[1] for ln in log.read_text().splitlines() if ln.startswith("write ")]
    return fingerprint(str(root / "run")), ops


def _with_fault(monkeypatch, spec: str) -> None:
    monkeypatch.setattr("storage.store._FS_WRAPPERS", [])  # gone after the test, whatever happens
    faults.install(spec)


def _without_fault(monkeypatch) -> None:
    faults.uninstall()


def test_reference_run_is_reproducible(reference, tmp_path):
    fp, ops = reference
    run_all(str(tmp_path / "again"), micro())
    assert fingerprint(str(tmp_path / "again")) == fp
    assert len(ops) > 40 and any("_COMMITTED.json" in p for p in ops) and any("_LEASE.json" in p for p in ops)


@pytest.mark.parametrize("effect", ["enospc", "eio", "connection"])
def test_a_storage_fault_at_every_write_point_then_resume_is_byte_identical(reference, tmp_path, monkeypatch, effect):
    """Each write point of the run (every data file, temporary file and rename, commit record,
    run.json, the lease) fails once with `effect`; the run stops with an error that is one
    sentence; a resume completes to the uninterrupted run's artifacts. The three effects split
    the write points between them (every third one each)."""
    fp, ops = reference
    offset = ["enospc", "eio", "connection"].index(effect)
    for n in range(1 + offset, len(ops) + 1, 3):
        uri = str(tmp_path / f"w{n}")
        _with_fault(monkeypatch, f"write:{n}:{effect}")
        try:
            run_all(uri, micro())
            failed = None
        except Exception as e:  # noqa: BLE001 - what the CLI would classify
            failed = e
        _without_fault(monkeypatch)
        assert failed is not None, f"write {n} ({ops[n - 1]}) did not fail"
        code, sentence = explain(failed, "sol-rl run ...")
        assert code == 1 and "\n" not in sentence, (n, ops[n - 1], sentence)
        run_all(uri, micro())
        assert fingerprint(uri) == fp, f"after a fault at write {n}: {ops[n - 1]}"
        assert uncommitted(tmp_path / f"w{n}") == []


def test_sigkill_at_write_points_then_resume_is_byte_identical(reference, tmp_path):
    """The process dies (SIGKILL) at 24 write points — inside commit-record writes (between the
    temporary file and its rename), right after data files, at the lease — and a resume in
    another process completes to the uninterrupted run's artifacts."""
    fp, ops = reference
    commit_renames = [n for n, p in enumerate(ops, 1) if p.endswith("_COMMITTED.json")]
    tmp_commits = [n for n, p in enumerate(ops, 1) if "-_COMMITTED.json" in p]
    data = [n for n, p in enumerate(ops, 1) if p.endswith(".parquet") or p.endswith(".safetensors")]
    points = sorted(
        set(commit_renames + tmp_commits[::2] + data[::3] + [n for n, p in enumerate(ops, 1) if "_LEASE" in p][:2])
    )
    assert len(points) >= 20
    assert torch.get_num_threads() == 1  # a forked child must not wait on the parent's OpenMP pool
    for n in points:
        uri = str(tmp_path / f"k{n}")
        pid = os.fork()
        if pid == 0:  # the child: run until the injected SIGKILL
            faults.install(f"write:{n}:kill")
            try:
                run_all(uri, micro())
            finally:
                os._exit(0)  # reached only if the kill did not happen
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"write {n} ({ops[n - 1]}) did not kill"
        )
        faults.reset()
        run_all(uri, micro())  # resume: the dead holder's lease is taken over (same host, pid gone)
        assert fingerprint(uri) == fp, f"after SIGKILL at write {n}: {ops[n - 1]}"
        assert uncommitted(tmp_path / f"k{n}") == [] and verify(open_run(uri))[1] == []


def test_a_retried_update_never_trains_twice(reference, tmp_path, monkeypatch):
    """The adversarial report: a storage error after the update stepped the policy in memory,
    then a retry in the same process (what Prefect's retry does). The retry must start from the
    committed state, not from the stepped one."""
    fp, _ = reference
    uri = str(tmp_path / "retry")
    run = open_run(uri, micro())
    for name in ("plan", "explore", "select", "regenerate", "audit"):
        stages.run_stage(run, 0, name)
    stages.run_stage(run, None, "baseline")
    _with_fault(monkeypatch, "write@iter=00000/update/_COMMITTED:1:eio")
    run = open_run(uri, micro())
    with pytest.raises(OSError):
        stages.run_stage(run, 0, "update")
    _without_fault(monkeypatch)
    stages.run_stage(run, 0, "update")  # the retry, same process, same cache
    stages.run_stage(run, 0, "eval")
    metrics = read_stage(run.store, 0, "update").to_pylist()
    assert metrics[-1]["optimizer_step"] == 1.0  # not 2: the failed attempt's step was not kept
    assert fingerprint(uri) == fp


def test_damaged_commit_record_and_run_json(reference, tmp_path):
    fp, _ = reference
    uri = tmp_path / "dmg"
    run_all(str(uri), micro())
    (uri / "iter=00000" / "update" / "_COMMITTED.json").write_bytes(b'{"stage": "upd')  # cut off
    checked, problems = verify(open_run(str(uri)))
    assert any("damaged commit record" in p for p in problems) and all("\n" not in p for p in problems)
    (uri / "run.json").write_bytes(b"")
    with pytest.raises(RunDamaged, match="run.json .* cannot be read"):
        open_run(str(uri))  # read-only: one sentence, how to rebuild it
    run_all(str(uri), micro())  # with the config: run.json rebuilt (the commits agree), the update recomputed
    assert fingerprint(str(uri)) == fp and verify(open_run(str(uri)))[1] == []
    (uri / "run.json").write_bytes(b"{")
    with pytest.raises(RunDamaged, match="another config"):
        open_run(str(uri), micro(**{"nft.lr": 0.02}))


def test_verify_checks_inputs_and_a_deterministic_recompute_keeps_downstream(reference, tmp_path):
    fp, _ = reference
    uri = tmp_path / "ids"
    run_all(str(uri), micro())
    # A file changed together with its commit's sha: the stage verifies, its consumers are stale.
    part = uri / "iter=00000" / "regenerate" / "part-00000.parquet"
    rec_path = part.parent / "_COMMITTED.json"
    import pyarrow.parquet as pq

    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("reward"), "reward", [[r + 1.0 for r in t.column("reward").to_pylist()]])
    pq.write_table(t, part)
    rec = json.loads(rec_path.read_text())
    run = open_run(str(uri))
    h = run.stage(0, "regenerate")
    data = part.read_bytes()
    import hashlib

    rec["files"]["part-00000.parquet"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    rec["files"]["part-00000.parquet"].pop("content", None)
    rec_path.write_text(json.dumps(rec))
    assert h.problems() == []
    _, problems = verify(run)
    assert any("iter=00000/update" in p and "stale" in p for p in problems), problems
    # Remove the damage, delete a committed upstream stage entirely, resume: it is recomputed
    # bit for bit, and what consumed it (same content id) is not redone.
    import shutil

    shutil.rmtree(part.parent)
    run_all(str(uri), micro())
    assert fingerprint(str(uri)) == fp
    committed_at = lambda: {
        n: json.loads(p.read_text())["committed_at"]
        for n, p in (
            ("select", uri / "iter=00000" / "select" / "_COMMITTED.json"),  # noqa: E731
            ("update", uri / "iter=00000" / "update" / "_COMMITTED.json"),
            ("baseline", uri / "baseline" / "_COMMITTED.json"),
        )
    }
    before = committed_at()
    shutil.rmtree(uri / "iter=00000" / "explore")
    run_all(str(uri), micro())
    after = committed_at()  # the baseline (and what consumed explore) was not recomputed
    assert fingerprint(str(uri)) == fp and after == before


def test_more_iterations_and_a_moved_run_resume(reference, tmp_path):
    uri = tmp_path / "a" / "r"
    run_all(str(uri), micro())
    moved = tmp_path / "b" / "r"
    moved.parent.mkdir()
    uri.rename(moved)
    cfg = micro(**{"run.iterations": 2, "storage.run_root": str(tmp_path / "b")})
    run_all(str(moved), cfg, iterations=2)  # neither run.iterations nor storage.run_root is part of the resume hash
    fp = fingerprint(str(moved))
    assert {k: v for k, v in fp.items() if not k.startswith("1/")} == reference[0] and "1/update" in fp
    with pytest.raises(ConfigMismatch, match="differing keys: nft.lr"):
        open_run(str(moved), micro(**{"nft.lr": 0.02}))
    with pytest.raises(ConfigMismatch, match="resolved.dtype"):
        open_run(str(moved), micro(**{"model.dtype": "bfloat16"}))


def test_lease_refuses_a_live_holder_and_takes_over_a_gone_one(tmp_path):
    from storage.store import RunStore

    store = RunStore(str(tmp_path / "leased"))
    first = Lease(store, timeout_s=60).acquire()
    try:
        with pytest.raises(LeaseHeld, match=f"being run by {socket.gethostname()} pid {os.getpid()}") as e:
            Lease(store, timeout_s=60).acquire()
        assert "\n" not in str(e.value)
        with pytest.raises(LeaseHeld):
            Lease(store, timeout_s=60).acquire(take_over=True)  # a live holder is never taken over
    finally:
        first.release()
    assert not store.exists(store.path("_LEASE.json"))  # released
    # A holder on this host whose process is gone: taken over without asking.
    store.write_json(
        store.path("_LEASE.json"),
        {
            "owner": "x",
            "host": socket.gethostname(),
            "pid": 2**22 + 12345,
            "pid_start": "1",
            "started": 0,
            "heartbeat": time.time(),
        },
    )
    Lease(store).acquire().release()
    # Another host's stale lease: refused with a hint, taken over with take_over=True.
    store.write_json(
        store.path("_LEASE.json"),
        {"owner": "y", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - 3600},
    )
    with pytest.raises(LeaseHeld, match="--take-over"):
        Lease(store, timeout_s=60).acquire()
    lease = Lease(store, timeout_s=60).acquire(take_over=True)
    # ... and the process that lost it finds out before its next commit.
    store.write_json(
        store.path("_LEASE.json"), {"owner": "z", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time()}
    )
    from storage.lease import LeaseLost

    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert store.exists(store.path("_LEASE.json"))  # not ours any more: left alone


def test_shapes_prompt_file_is_honoured_and_checked(tmp_path):
    from solrl.models import check_model

    f = tmp_path / "p.txt"
    f.write_text("# my pool\na red circle on the left\na blue square above a yellow triangle\n")
    cfg = micro(**{"prompts.file": str(f), "run.iterations": 1})
    check_model(cfg)
    run = open_run(str(tmp_path / "pf"), cfg)
    stages.run_stage(run, 0, "plan")
    assert [p for _, p in stages.plan_of(run, 0).prompts] == [
        "a red circle on the left",
        "a blue square above a yellow triangle",
    ]
    f.write_text("a pink hexagon on the left\n")
    with pytest.raises(FileNotFoundError, match="outside the shapes grammar"):
        check_model(micro(**{"prompts.file": str(f)}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model(micro(**{"prompts.file": str(tmp_path / "nope.txt")}))


def test_the_model_loads_once_and_committed_adapters_are_not_read_back(tmp_path, caplog):
    """The process cache: one weight load for a whole run; the adapters an update committed are
    the ones in memory (no restore from the store between iterations). Counted from the cache's log."""
    import logging

    from tasks.cache import CACHE

    CACHE.clear()
    with caplog.at_level(logging.INFO, logger="solrl"):
        run_all(str(tmp_path / "c"), micro(**{"run.iterations": 2}), iterations=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "solrl"]
    assert sum(m.startswith("loaded the shapes weights") for m in messages) == 1
    assert not any(m.startswith("restored the adapters") for m in messages)
    CACHE.clear()  # a fresh process resuming from iteration 1 restores once (the assertion above can fail)
    with caplog.at_level(logging.INFO, logger="solrl"):
        caplog.clear()
        run_all(str(tmp_path / "c"), micro(**{"run.iterations": 3}), iterations=3)
    assert sum(r.getMessage().startswith("restored the adapters") for r in caplog.records if r.name == "solrl") == 1


def test_eval_pairs_are_shared_by_every_run_mode_and_seed(tmp_path):
    """Two runs that differ in run.seed and run.mode render the same evaluation (set, prompt,
    seed) pairs and the same baseline: their gains are paired with each other."""
    from storage.queries import read_stage

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_all(a, micro(**{"run.seed": 1}))
    run_all(b, micro(**{"run.seed": 2, "run.mode": "diffusionnft"}))
    ra, rb = open_run(a), open_run(b)
    key = lambda t: sorted(zip(t["set"], t["prompt"], t["seed"]))  # noqa: E731
    ea, eb = (read_stage(r.store, 0, "eval", "set, prompt, seed").to_pydict() for r in (ra, rb))
    assert key(ea) == key(eb) and len(ea["seed"]) == 2
    assert ra.stage(None, "baseline").content_id() == rb.stage(None, "baseline").content_id()


@pytest.mark.parametrize(
    "over,kill_at",
    [
        ({"nft.steps_per_iteration": 2}, "write@iter=00000/update/state:3:kill"),
        # the int8 explore (integer GEMMs; bf16 in and out of them): killed between its two prompt shards
        ({"explore.precision": "int8"}, "write@iter=00000/explore:3:kill"),
    ],
    ids=["two-steps", "int8-explore"],
)
def test_bf16_runs_are_bit_identical_and_a_resume_after_sigkill_with_two_steps_too(tmp_path, over, kill_at):
    """model.dtype bfloat16 with nft.steps_per_iteration 2 (or an int8 explore): two runs agree
    bit for bit, and a run SIGKILLed while its update writes the adapter files (or between the
    explore's shards) resumes to them."""
    cfg = micro(**{"model.dtype": "bfloat16", **over})
    run_all(str(tmp_path / "a"), cfg)
    run_all(str(tmp_path / "b"), cfg)
    fp = fingerprint(str(tmp_path / "a"))
    assert fingerprint(str(tmp_path / "b")) == fp
    assert open_run(str(tmp_path / "a")).resolved.dtype == "bfloat16"
    store_a = open_run(str(tmp_path / "a")).store
    precision = read_stage(store_a, 0, "explore", "precision").to_pydict()["precision"]
    assert set(precision) == {over.get("explore.precision", "nvfp4")}
    # the fidelity audit measures the proxy that explored
    assert set(read_stage(store_a, 0, "audit", "proxy_precision").to_pydict()["proxy_precision"]) == set(precision)
    assert torch.get_num_threads() == 1
    pid = os.fork()
    if pid == 0:
        faults.install(kill_at)
        try:
            run_all(str(tmp_path / "k"), cfg)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    faults.reset()
    run_all(str(tmp_path / "k"), cfg)
    assert fingerprint(str(tmp_path / "k")) == fp


def _as_made_by_an_older_version(root: Path, proxy_noise: float) -> None:
    """Rewrite a run's run.json and commit records as a version before `fidelity.proxy_noise` was
    removed (and before `explore.emulation_output` existed) wrote them: the key in run.json, a
    config hash computed by that version's rules."""
    meta = json.loads((root / "run.json").read_text())
    meta["config"]["fidelity"]["proxy_noise"] = proxy_noise
    meta["config"]["explore"].pop("emulation_output", None)
    meta["config_hash"] = "0" * 64  # whatever that version computed: not what this one computes
    (root / "run.json").write_text(json.dumps(meta))
    for rec in root.rglob("_COMMITTED.json"):
        r = json.loads(rec.read_text())
        r["config_hash"] = "0" * 64
        rec.write_text(json.dumps(r))


def test_a_run_made_before_a_config_key_was_removed_opens_verifies_and_resumes(tmp_path):
    """Upgrading sol-rl must not strand runs: a run whose run.json has a removed key at its no-op
    value (and lacks a newer key) opens read-only, verifies clean and resumes under the hash it
    was made with, recomputing nothing; a removed key at another value is refused in a sentence."""
    cfg = micro(**{"eval.every": 0, "fidelity.audit_prompts": 0})
    uri = str(tmp_path / "old")
    run_all(uri, cfg)
    files = {p: p.read_bytes() for p in Path(uri).rglob("*") if p.is_file() and p.name != "_LEASE.json"}
    _as_made_by_an_older_version(Path(uri), 0.0)
    old = open_run(uri)
    assert old.hash == "0" * 64
    checked, problems = verify(old)
    assert checked > 0 and problems == []
    resumed = open_run(uri, cfg)  # the same computation: resumes, nothing stale
    assert resumed.hash == "0" * 64
    assert all(stages.is_done(resumed, resumed.stage(0, name)) for name in stages.plan_of(resumed, 0).stages)
    run_all(uri, cfg)  # a resume: every stage already committed
    for p, data in files.items():
        if p.name not in ("run.json", "_COMMITTED.json"):
            assert p.read_bytes() == data, p  # nothing recomputed
    with pytest.raises(ConfigMismatch, match="differing keys: explore.n"):
        open_run(uri, cfg.with_overrides(**{"explore.n": 6}))
    _as_made_by_an_older_version(Path(uri), 0.3)
    with pytest.raises(RunDamaged, match=r"fidelity.proxy_noise = 0.3, which this version no longer has"):
        open_run(uri)
