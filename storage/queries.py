"""DuckDB queries over a run's committed Parquet files (local or s3://)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from solrl.errors import MissingInput

from .selection import select_seeds_window
from .store import COMMIT, RunStore


def connect(store: RunStore) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read the store's URLs (fsspec filesystems registered)."""
    con = duckdb.connect()
    if not store.local:
        con.register_filesystem(getattr(store.fs, "inner", store.fs))
    return con


def committed_files(store: RunStore, iteration: int | None, stage: str) -> list[str]:
    """URLs of a stage's committed Parquet files (only files listed in its commit)."""
    return store.stage(iteration, stage).committed_files()


def read_stage(
    store: RunStore, iteration: int | None, stage: str, columns: str = "*", prompt_id: int | None = None
) -> pa.Table:
    """A committed stage's rows (only the files its commit lists), optionally of one prompt."""
    files = committed_files(store, iteration, stage)
    if not files:
        raise MissingInput(
            f"{store.uri}/{store.stage(iteration, stage).label} has no committed data: run or resume the run first"
        )
    con = connect(store)
    where, params = (
        ("WHERE prompt_id = $pid", {"files": files, "pid": prompt_id})
        if prompt_id is not None
        else ("", {"files": files})
    )
    try:
        return con.sql(
            f"SELECT {columns} FROM read_parquet($files, union_by_name = true) {where}", params=params
        ).to_arrow_table()
    finally:
        con.close()


def reselect(store: RunStore, iteration: int, k: int, on_short_prompt: str = "error"):
    """The selection again over the stored explore rows, by the reference window SQL
    (select_window.sql), not the fast path that made the stored one (for verify, the notebooks)."""
    explore = read_stage(store, iteration, "explore", "prompt_id, prompt, seed, reward")
    return select_seeds_window(explore, k, on_short_prompt)


SEED_RANKING_SQL = """
SELECT e.prompt_id, e.prompt, e.seed, e.candidate,
       row_number() OVER (PARTITION BY e.prompt_id ORDER BY e.reward DESC, e.seed ASC) AS proxy_rank,
       e.reward AS proxy_reward,
       s.side,
       r.reward AS regenerated_reward
FROM read_parquet($explore, union_by_name = true) e
LEFT JOIN read_parquet($selected) s USING (prompt_id, seed)
LEFT JOIN (SELECT prompt_id, seed, reward FROM read_parquet($regen, union_by_name = true)) r USING (prompt_id, seed)
{where}
ORDER BY e.prompt_id, proxy_rank
"""


def seed_ranking(store: RunStore, iteration: int, prompt_id: int | None = None) -> pa.Table:
    """Every explored seed of an iteration with its proxy rank, selection side and regenerated reward."""
    explore = committed_files(store, iteration, "explore")
    selected = committed_files(store, iteration, "select")
    regen = committed_files(store, iteration, "regenerate")
    if not explore or not selected:
        raise MissingInput(
            f"{store.uri}/{store.stage(iteration, 'explore').label} has no committed explore/select data (mode diffusionnft has no explore)"
        )
    con = connect(store)
    try:
        where = "WHERE e.prompt_id = $pid" if prompt_id is not None else ""
        params = {"explore": explore, "selected": selected[0], "regen": regen or selected}
        if prompt_id is not None:
            params["pid"] = prompt_id
        sql = SEED_RANKING_SQL.format(where=where)
        if not regen:
            sql = sql.replace(
                "SELECT prompt_id, seed, reward FROM read_parquet($regen, union_by_name = true)",
                "SELECT prompt_id, seed, CAST(NULL AS DOUBLE) AS reward FROM read_parquet($regen)",
            )
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


__all__ = ["connect", "committed_files", "read_stage", "reselect", "seed_ranking", "COMMIT"]


PAIRED_SQL = """
SELECT e.set AS set, count(*) AS n,
       avg(e.reward - b.reward) AS gain,
       stddev_samp(e.reward - b.reward) / sqrt(count(*)) AS se,
       avg(b.reward) AS base, avg(e.reward) AS reward
       {strict}
FROM read_parquet($eval, union_by_name = true) e
JOIN read_parquet($base, union_by_name = true) b USING (set, prompt, seed)
GROUP BY e.set ORDER BY e.set
"""


def paired_gains(store: RunStore, iteration: int, strict: str | None = "reward_shapes_strict") -> dict[str, dict]:
    """Per evaluation set: the paired gain of an eval over the run's baseline (same prompts and
    seeds) — mean difference, its standard error over the n (prompt, seed) pairs — and, when
    the run reports it, strict accuracy before and after. {} when either is not committed."""
    ev, base = committed_files(store, iteration, "eval"), committed_files(store, None, "baseline")
    if not ev or not base:
        return {}
    con = connect(store)
    try:
        cols = con.sql("SELECT * FROM read_parquet($f) LIMIT 0", params={"f": base[0]}).columns
        extra = f", avg(b.{strict}) AS strict_base, avg(e.{strict}) AS strict" if strict and strict in cols else ""
        rows = con.sql(PAIRED_SQL.format(strict=extra), params={"eval": ev, "base": base}).to_arrow_table().to_pylist()
    finally:
        con.close()
    return {r.pop("set"): r for r in rows}
