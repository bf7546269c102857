"""DuckDB queries over a run's committed Parquet files (local or s3://)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from .selection import select_seeds
from .store import COMMIT, RunStore, iter_dir, join


def connect(store: RunStore) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read the store's URLs (fsspec filesystems registered)."""
    con = duckdb.connect()
    proto = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
    if proto not in ("file", "local"):
        con.register_filesystem(store.fs)
    return con


def committed_files(store: RunStore, iteration: int, stage: str) -> list[str]:
    """URLs of a stage's committed Parquet files (only files listed in its commit)."""
    rec = store.commit_record(iteration, stage)
    if rec is None:
        return []
    d = store.stage_dir(iteration, stage)
    return [store.url(join(d, name)) for name in sorted(rec["files"]) if name.endswith(".parquet")]


def read_stage(store: RunStore, iteration: int, stage: str, columns: str = "*", prompt_id: int | None = None) -> pa.Table:
    """A committed stage's rows (only the files its commit lists), optionally of one prompt."""
    files = committed_files(store, iteration, stage)
    if not files:
        raise FileNotFoundError(f"{store.uri}/{iter_dir(iteration)}/{stage} has no committed data: run or resume the run first")
    con = connect(store)
    where, params = ("WHERE prompt_id = $pid", {"files": files, "pid": prompt_id}) if prompt_id is not None else ("", {"files": files})
    try:
        return con.sql(f"SELECT {columns} FROM read_parquet($files, union_by_name = true) {where}", params=params).to_arrow_table()
    finally:
        con.close()


def reselect(store: RunStore, iteration: int, k: int, on_short_prompt: str = "error"):
    """Re-run the selection SQL over the stored explore rows (for verify and the notebooks)."""
    explore = read_stage(store, iteration, "explore", "prompt_id, prompt, seed, reward")
    return select_seeds(explore, k, on_short_prompt)


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
        raise FileNotFoundError(f"{store.uri}/{iter_dir(iteration)} has no committed explore/select data (mode diffusionnft has no explore)")
    con = connect(store)
    try:
        where = "WHERE e.prompt_id = $pid" if prompt_id is not None else ""
        params = {"explore": explore, "selected": selected[0], "regen": regen or selected}
        if prompt_id is not None:
            params["pid"] = prompt_id
        sql = SEED_RANKING_SQL.format(where=where)
        if not regen:
            sql = sql.replace("SELECT prompt_id, seed, reward FROM read_parquet($regen, union_by_name = true)", "SELECT prompt_id, seed, CAST(NULL AS DOUBLE) AS reward FROM read_parquet($regen)")
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


__all__ = ["connect", "committed_files", "read_stage", "reselect", "seed_ranking", "COMMIT"]
