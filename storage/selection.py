"""Seed selection with DuckDB: the SQL in select.sql over explore rows (an Arrow table or
Parquet files)."""

from __future__ import annotations

from importlib import resources

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

SELECT_SQL = resources.files(__package__).joinpath("select.sql").read_text()


class ShortPromptError(ValueError):
    pass


def select_seeds(explore: pa.Table, k: int, on_short_prompt: str = "error") -> tuple[pa.Table, dict]:
    """Top-K/2 and bottom-K/2 seeds per prompt. Returns (selected table, stats) where stats
    counts non-finite rewards excluded and prompts skipped for having fewer than K finite."""
    if k < 2 or k % 2:
        raise ValueError(f"select.k must be a positive even number, got {k}")
    con = duckdb.connect()
    con.register("explore_all", explore)
    counts = con.execute(
        "SELECT prompt_id, count(*) FILTER (WHERE isfinite(reward)) AS finite, count(*) FILTER (WHERE NOT isfinite(reward) OR reward IS NULL) AS bad "
        "FROM explore_all GROUP BY prompt_id ORDER BY prompt_id"
    ).fetchall()
    short = [(p, f) for p, f, _ in counts if f < k]
    if short and on_short_prompt != "skip":
        p, f = short[0]
        raise ShortPromptError(
            f"prompt {p} has only {f} candidates with a finite reward, fewer than select.k={k}: "
            "raise explore.n, fix the reward, or set select.on_short_prompt: skip"
        )
    skip = {p for p, _ in short}
    kept = explore.filter(pc.invert(pc.is_in(explore["prompt_id"], pa.array(sorted(skip), type=explore.schema.field("prompt_id").type)))) if skip else explore
    con.register("explore", kept)
    selected = con.sql(SELECT_SQL, params={"half": k // 2}).to_arrow_table()
    con.close()
    stats = {"non_finite": int(sum(b for _, _, b in counts)), "skipped_prompts": sorted(skip)}
    return selected, stats
