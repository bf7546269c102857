import math

import duckdb
import pyarrow as pa
import pytest

from storage import schemas
from storage.queries import committed_files, read_stage
from storage.selection import ShortPromptError, select_seeds
from storage.store import RunStore


def _explore_table(rewards_by_prompt: dict[int, list[float]], seeds=None):
    cols = {k: [] for k in ("prompt_id", "prompt", "candidate", "seed", "precision", "steps", "reward", "duration_ms")}
    for pid, rewards in rewards_by_prompt.items():
        for c, r in enumerate(rewards):
            cols["prompt_id"].append(pid)
            cols["prompt"].append(f"prompt {pid}")
            cols["candidate"].append(c)
            cols["seed"].append(seeds[pid][c] if seeds else 1000 * pid + c)
            cols["precision"].append("nvfp4")
            cols["steps"].append(6)
            cols["reward"].append(r)
            cols["duration_ms"].append(1.0)
    return schemas.to_table(cols, schemas.explore_schema([]), "r", 0)


def test_commit_protocol_verify_corrupt_and_clear(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    h = store.stage(0, "explore")
    t = _explore_table({0: [0.1, 0.2, 0.3, 0.4]})
    h.write_table("part-00000.parquet", t)
    assert h.record is None and h.problems() == ["iter=00000/explore: not committed"]
    rec = h.commit("h1", {"x": "y"})
    assert rec["files"]["part-00000.parquet"]["rows"] == 4 and len(rec["files"]["part-00000.parquet"]["sha256"]) == 64
    assert h.record == rec and h.problems() == []
    first_id = h.content_id()
    h.commit("h1")  # re-committing the same bytes keeps the content id
    assert h.content_id() == first_id
    # corrupt the committed file: verify names it
    data = bytearray(store.read_bytes(h.file("part-00000.parquet")))
    data[-20] ^= 0xFF
    (tmp_path / "run" / "iter=00000" / "explore" / "part-00000.parquet").write_bytes(bytes(data))
    assert any("sha256 mismatch" in p for p in h.problems())
    # leftovers are removed, commit first
    h.write_bytes("part-00001.parquet", b"junk")
    removed = h.clear()
    assert len(removed) == 2 and h.data_files() == [] and h.record is None


def test_writes_are_atomic_and_a_damaged_record_is_not_committed(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    h = store.stage(1, "select")
    h.write_table("selected.parquet", _explore_table({0: [0.5] * 4}))
    h.commit("h")
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.startswith(".tmp-")]  # no temporaries left
    (tmp_path / "run" / "iter=00001" / "select" / "_COMMITTED.json").write_bytes(b"")  # a cut-off record
    rec, damaged = h.read_record()
    assert rec is None and "damaged commit record" in damaged and "\n" not in damaged
    assert h.problems() == [damaged] and h.content_id() is None
    assert h.committed_files() == []  # nothing of a damaged commit is ever read as committed


def test_content_id_ignores_volatile_columns(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    ids, shas = [], []
    for worker in ("host-a:1", "host-b:2"):
        h = store.stage(0, "explore")
        h.clear()
        t = _explore_table({0: [0.1, 0.2]})
        t = t.set_column(t.schema.get_field_index("worker"), "worker", pa.array([worker] * 2))
        h.write_table("part-00000.parquet", t)
        rec = h.commit("h")
        ids.append(h.content_id())
        shas.append(rec["files"]["part-00000.parquet"]["sha256"])
    assert shas[0] != shas[1] and ids[0] == ids[1]


def test_duckdb_reads_only_committed_parquet(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    h = store.stage(3, "explore")
    h.write_table("part-00000.parquet", _explore_table({0: [0.5] * 4}))
    h.commit("h")
    h.write_table("part-00001.parquet", _explore_table({1: [0.9] * 4}))  # uncommitted leftover
    assert len(committed_files(store, 3, "explore")) == 1
    assert read_stage(store, 3, "explore").num_rows == 4
    # hive-style folders let one query read a whole run
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/run/iter=*/explore/part-00000.parquet', hive_partitioning = true) WHERE iter = 3"
    ).fetchall()[0][0]
    assert n == 4


def test_selection_sql_top_bottom_ties_by_seed_and_non_finite(tmp_path):
    rewards = {0: [0.5, 0.9, 0.9, float("nan"), 0.1, 0.1, 0.3, float("inf")], 1: [0.2, 0.4, 0.6, 0.8, 0.7, 0.5]}
    seeds = {0: [80, 70, 60, 50, 40, 30, 20, 10], 1: [1, 2, 3, 4, 5, 6]}
    store = RunStore(str(tmp_path / "run"))
    store.write_table(store.path("x.parquet"), _explore_table(rewards, seeds))
    table = store.read_table(store.path("x.parquet"))  # round trip through real Parquet
    sel, stats = select_seeds(table, 4)
    assert stats["non_finite"] == 2
    rows = sel.to_pylist()
    p0 = [(r["seed"], r["side"], r["proxy_rank"]) for r in rows if r["prompt_id"] == 0]
    # finite: seeds 80(.5) 70(.9) 60(.9) 40(.1) 30(.1) 20(.3); ties by seed ascending
    assert p0 == [(60, "top", 1), (70, "top", 2), (40, "bottom", 5), (30, "bottom", 6)] or p0 == [
        (60, "top", 1),
        (70, "top", 2),
        (30, "bottom", 5),
        (40, "bottom", 6),
    ]
    assert p0[2][0] == 30  # tie at 0.1: seed 30 ranks before 40
    p1 = [(r["seed"], r["side"]) for r in rows if r["prompt_id"] == 1]
    assert p1 == [(4, "top"), (5, "top"), (2, "bottom"), (1, "bottom")]
    assert all(math.isfinite(r["proxy_reward"]) for r in rows)


def test_short_prompt_is_an_error_or_skipped():
    t = _explore_table({0: [0.1, float("nan"), float("nan"), 0.2], 1: [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(ShortPromptError, match="prompt 0 has only 2 candidates"):
        select_seeds(t, 4)
    sel, stats = select_seeds(t, 4, on_short_prompt="skip")
    assert set(sel.column("prompt_id").to_pylist()) == {1} and stats["skipped_prompts"] == [0]
    with pytest.raises(ValueError, match="even"):
        select_seeds(t, 3)


def test_schemas_declare_reward_columns_and_fill_nulls():
    s = schemas.regenerate_schema(["shapes", "shapes_strict"])
    assert "reward_shapes" in s.names and "reward_shapes_strict" in s.names
    t = schemas.to_table({"prompt_id": [1], "seed": [5], "reward": [0.5]}, s, "run", 2)
    assert t.schema == s and t.column("image").to_pylist() == [None] and t.column("iteration").to_pylist() == [2]
    assert isinstance(t, pa.Table)
