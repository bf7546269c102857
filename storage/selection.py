"""Seed selection with DuckDB (docs/algorithm.md, "Selection") over explore rows (an Arrow table or Parquet
files read into one).

select_window.sql defines the result: one window query that ranks every finite candidate of a
prompt. select.sql gets the same table without that sort: top-N aggregates find, per prompt,
the rows of the K/2 + 1 highest and lowest rewards, and a second, small query settles ties at the
K/2 boundary by seed; this module orders ties inside the kept rows by seed and assembles the
table. Inputs the fast path does not take (NULL prompt_id or seed, rewards that are not
float32/float64, ids that are not integers, a prompt that is not text) go through the window
query. tests/test_selection_sql.py checks the two give identical tables.
"""

from __future__ import annotations

import re
from importlib import resources

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schemas import SELECTION


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def _named_queries(text: str) -> dict[str, str]:
    """The `-- name: <name>` sections of a SQL file, each without its trailing semicolon."""
    parts = re.split(r"^-- name: (\w+)[ \t]*$", text, flags=re.M)
    return {name: body.strip().rstrip(";").strip() for name, body in zip(parts[1::2], parts[2::2])}


WINDOW_SQL = _read("select_window.sql")
_FAST = _named_queries(_read("select.sql"))
PER_PROMPT_SQL, TIES_SQL = _FAST["per_prompt"], _FAST["ties"]

#: What the selection returns (the window query's output columns and types).
SELECTED_SCHEMA = pa.schema(SELECTION)


class ShortPromptError(ValueError):
    pass


def select_seeds(explore: pa.Table, k: int, on_short_prompt: str = "error") -> tuple[pa.Table, dict]:
    """Top-K/2 and bottom-K/2 seeds per prompt. Returns (selected table, stats) where stats
    counts non-finite rewards excluded and prompts skipped for having fewer than K finite."""
    _check_k(k)
    if not _fast_path_applies(explore):
        return select_seeds_window(explore, k, on_short_prompt)
    con = duckdb.connect()
    try:
        return _select_fast(con, explore, k, on_short_prompt)
    finally:
        con.close()


def select_seeds_window(explore: pa.Table, k: int, on_short_prompt: str = "error") -> tuple[pa.Table, dict]:
    """select_seeds by the reference window query (select_window.sql) alone: the definition the
    fast path is checked against, and the path for inputs it does not take."""
    _check_k(k)
    con = duckdb.connect()
    try:
        return _select_window(con, explore, k, on_short_prompt)
    finally:
        con.close()


def _check_k(k: int) -> None:
    if k < 2 or k % 2:
        raise ValueError(f"select.k must be a positive even number, got {k}")


def _short_prompts(counts: list[tuple[object, int]], k: int, on_short_prompt: str) -> list:
    """The prompt ids with fewer than K finite rewards (counts in prompt_id order); an error
    unless `select.on_short_prompt: skip`."""
    short = [(p, f) for p, f in counts if f < k]
    if short and on_short_prompt != "skip":
        p, f = short[0]
        raise ShortPromptError(
            f"prompt {p} has only {f} candidates with a finite reward, fewer than select.k={k}: "
            "raise explore.n, fix the reward, or set select.on_short_prompt: skip"
        )
    return sorted({p for p, _ in short})


def _select_window(
    con: duckdb.DuckDBPyConnection, explore: pa.Table, k: int, on_short_prompt: str
) -> tuple[pa.Table, dict]:
    """The reference path: select_window.sql over the rows of the prompts kept."""
    con.register("explore_all", explore)
    counts = con.execute(
        "SELECT prompt_id, count(*) FILTER (WHERE isfinite(reward)) AS finite, count(*) FILTER (WHERE NOT isfinite(reward) OR reward IS NULL) AS bad "
        "FROM explore_all GROUP BY prompt_id ORDER BY prompt_id"
    ).fetchall()
    skip = _short_prompts([(p, f) for p, f, _ in counts], k, on_short_prompt)
    kept = (
        explore.filter(
            pc.invert(pc.is_in(explore["prompt_id"], pa.array(skip, type=explore.schema.field("prompt_id").type)))
        )
        if skip
        else explore
    )
    con.register("explore", kept)
    selected = con.sql(WINDOW_SQL, params={"half": k // 2}).to_arrow_table()
    return selected, {"non_finite": int(sum(b for _, _, b in counts)), "skipped_prompts": skip}


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _fast_path_applies(explore: pa.Table) -> bool:
    s = explore.schema
    if not all(name in s.names for name in ("prompt_id", "prompt", "seed", "reward")):
        return False  # the window query reports the missing column
    pid, seed, reward = s.field("prompt_id").type, s.field("seed").type, s.field("reward").type
    return (
        pa.types.is_integer(pid)
        and pid != pa.uint64()
        and pa.types.is_integer(seed)
        and seed != pa.uint64()
        and reward in (pa.float32(), pa.float64())
        and _is_text(s.field("prompt").type)
        and explore["prompt_id"].null_count == 0
        and explore["seed"].null_count == 0
    )


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as one numpy array: no copy for a single chunk without NULLs (NULL -> NaN)."""
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=False)
    return column.to_numpy()


def _list_matrix(lists: pa.ChunkedArray, width: int) -> np.ndarray:
    """A list column whose lists all have `width` entries, as a [rows, width] array."""
    return pc.list_flatten(lists).to_numpy().reshape(-1, width)


def _fill(block: np.ndarray, rows: np.ndarray, start: np.ndarray, values: pa.ChunkedArray) -> None:
    """block[rows[j], start[j]:] = the j-th list of `values`, for every j (lists of exactly that length)."""
    if not rows.size:
        return
    sub = block[rows]
    into = np.arange(block.shape[1])[None, :] >= start[:, None]
    flat = pc.list_flatten(values).to_numpy()
    if flat.size != int(into.sum()):
        raise AssertionError(f"tie query returned {flat.size} rows, expected {int(into.sum())}")
    sub[into] = flat
    block[rows] = sub


def _select_fast(
    con: duckdb.DuckDBPyConnection, explore: pa.Table, k: int, on_short_prompt: str
) -> tuple[pa.Table, dict]:
    half, n = k // 2, explore.num_rows
    row = pa.array(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))
    con.register(
        "explore",
        pa.table({"prompt_id": explore["prompt_id"], "seed": explore["seed"], "reward": explore["reward"], "i": row}),
    )
    per = con.sql(PER_PROMPT_SQL, params={"n": half + 1}).to_arrow_table()

    pids = _numpy(per["prompt_id"])
    n_finite = _numpy(per["n_finite"])
    short = n_finite < k
    skip = _short_prompts(list(zip(pids[short].tolist(), n_finite[short].tolist())), k, on_short_prompt)
    stats = {"non_finite": int((_numpy(per["n_rows"]) - n_finite).sum()), "skipped_prompts": skip}
    if short.any():
        per = per.filter(pa.array(~short))
        pids, n_finite = pids[~short], n_finite[~short]

    reward = _numpy(explore["reward"])  # NULL -> NaN; only finite rows are ever read
    seed = _numpy(explore["seed"])
    # Per prompt, the rows of the half + 1 highest rewards (descending) and of the half + 1 lowest
    # (ascending); rows of equal reward come in any order.
    top_i, bottom_i = _list_matrix(per["top_i"], half + 1), _list_matrix(per["bottom_i"], half + 1)
    top_r, bottom_r = reward[top_i], reward[bottom_i]
    top, bottom = top_i[:, :half].copy(), bottom_i[:, :half].copy()

    # A tie across the boundary (reward half == reward half + 1): rows strictly better than the
    # boundary reward are all kept; the rest of the side are the boundary-reward rows with the
    # smallest seeds (top) or the largest seeds (bottom: they rank last), from the ties query.
    tie_t = top_r[:, half - 1] == top_r[:, half]
    tie_b = bottom_r[:, half - 1] == bottom_r[:, half]
    tie = tie_t | tie_b
    if tie.any():
        keep_t = (top_r[:, :half] > top_r[:, half - 1 : half]).sum(axis=1)
        keep_b = (bottom_r[:, :half] < bottom_r[:, half - 1 : half]).sum(axis=1)
        ties = pa.table(
            {
                "prompt_id": per["prompt_id"].filter(pa.array(tie)),
                "top_r": pa.array(top_r[tie, half - 1].astype(np.float64), mask=~tie_t[tie]),
                "bottom_r": pa.array(bottom_r[tie, half - 1].astype(np.float64), mask=~tie_b[tie]),
                "top_need": pa.array((half - keep_t[tie]).astype(np.int64)),
                "bottom_need": pa.array((half - keep_b[tie]).astype(np.int64)),
            }
        )
        con.register("ties", ties)
        filled = con.sql(TIES_SQL, params={"half": half}).to_arrow_table()
        if filled.num_rows != ties.num_rows:
            raise AssertionError(f"tie query returned {filled.num_rows} prompts, expected {ties.num_rows}")
        rows_t, rows_b = np.flatnonzero(tie_t), np.flatnonzero(tie_b)
        _fill(top, rows_t, keep_t[rows_t], filled["top_i"])
        _fill(bottom, rows_b, keep_b[rows_b], filled["bottom_i"])

    # Both sides in rank order (reward descending); then seed ascending within equal rewards,
    # re-sorting only the sides where two equal rewards are out of seed order.
    sel = np.concatenate([top, bottom[:, ::-1]], axis=1)
    r, s = reward[sel], seed[sel]
    unordered = (r[:, 1:] == r[:, :-1]) & (s[:, 1:] < s[:, :-1])
    unordered[:, half - 1] = False  # top | bottom junction
    fix = np.flatnonzero(unordered.any(axis=1))
    if fix.size:
        sides = sel[fix].reshape(-1, half)
        order = np.lexsort((seed[sides].ravel(), -reward[sides].ravel(), np.repeat(np.arange(sides.shape[0]), half)))
        sel[fix] = sides.ravel()[order].reshape(fix.size, 2 * half)

    flat = sel.ravel()
    rank = np.empty(sel.shape, dtype=np.int32)
    rank[:, :half] = np.arange(1, half + 1, dtype=np.int32)
    rank[:, half:] = (n_finite - half).astype(np.int32)[:, None] + np.arange(1, half + 1, dtype=np.int32)
    prompt = explore["prompt"].take(pa.array(flat))
    columns = [
        pa.array(np.repeat(pc.cast(pa.array(pids), pa.int32()).to_numpy(), 2 * half)),
        prompt.cast(pa.string()) if prompt.type != pa.string() else prompt,
        pa.array(seed[flat].astype(np.int64, copy=False)),
        _sides(half, len(pids)),
        pa.array(rank.ravel()),
        pa.array(reward[flat].astype(np.float64, copy=False)),
    ]
    return pa.Table.from_arrays(columns, schema=SELECTED_SCHEMA), stats


def _sides(half: int, prompts: int) -> pa.Array:
    """'top' x half, then 'bottom' x half, for each prompt."""
    codes = np.tile(np.repeat(np.array([0, 1], dtype=np.int8), half), prompts)
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(["top", "bottom"])).cast(pa.string())
