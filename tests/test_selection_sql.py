"""The fast selection (storage/select.sql: top-N aggregates + tie settling in storage.selection)
gives exactly the table of the reference window query (storage/select_window.sql): same rows,
order, columns, types, sides and proxy ranks, ties broken by seed ascending."""

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from storage import selection as S
from storage.selection import ShortPromptError, select_seeds, select_seeds_window

REWARD_LEVELS = np.array([0.5, 0.0, -0.0, 1.0, -1.0, 0.25, np.nan, np.inf, -np.inf])
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def window_sql(explore: pa.Table, k: int) -> pa.Table:
    """storage/select_window.sql run as is (no short prompts in `explore`)."""
    con = duckdb.connect()
    con.register("explore", explore)
    try:
        return con.sql(S.WINDOW_SQL, params={"half": k // 2}).to_arrow_table()
    finally:
        con.close()


def random_explore(
    rng: np.random.Generator, k: int, *, prompts: int | None = None, varying_prompt_text: bool = False
) -> pa.Table:
    """Explore rows built to hit the tie rules: rewards from a few levels (±0.0, NaN, ±inf,
    NULL) or continuous, prompts with exactly K finite candidates, int64 seeds from the whole
    range (extremes included), duplicate seeds, rows in random order."""
    pid, text, seed, reward = [], [], [], []
    for p in rng.permutation(prompts or int(rng.integers(1, 7))):
        finite_wanted = int(rng.choice([k, k, k + 1, k + int(rng.integers(0, 60))]))
        n_bad = int(rng.integers(0, 4))
        m = finite_wanted + n_bad
        kind = rng.integers(0, 4)
        if kind == 0:  # continuous
            r = rng.random(m)
        elif kind == 1:  # two levels: a boundary tie almost surely
            r = rng.choice([0.0, 1.0], size=m)
        elif kind == 2:  # a few levels, incl. -0.0 == 0.0
            r = rng.choice(REWARD_LEVELS[: int(rng.integers(1, 6))], size=m)
        else:  # all equal
            r = np.full(m, float(rng.choice([0.3, -0.0])))
        r[:n_bad] = rng.choice([np.nan, np.inf, -np.inf], size=n_bad)
        null = np.zeros(m, dtype=bool)
        null[:n_bad] = rng.random(n_bad) < 0.3
        if varying_prompt_text:  # distinct seeds: the window's order is then total
            s = rng.choice(np.arange(-5000, 5000), size=m, replace=False)
        elif rng.random() < 0.5:
            s = rng.integers(INT64_MIN, INT64_MAX, size=m, endpoint=True)
            s[: min(2, m)] = [INT64_MIN, INT64_MAX][: min(2, m)]
        else:
            s = rng.integers(-20, 20, size=m)  # duplicate seeds
        pid += [int(p) * 3 - 4] * m
        text += [f"prompt {p}" + (f" / {j % 3}" if varying_prompt_text else "") for j in range(m)]
        seed.append(s)
        reward.append(np.where(null, np.nan, r))
        if null.any():
            reward[-1] = pa.array(reward[-1], mask=null)
    order = rng.permutation(len(pid))
    rewards = pa.concat_arrays([x if isinstance(x, pa.Array) else pa.array(x) for x in reward]).take(order)
    t = pa.table(
        {
            "prompt_id": pa.array(np.array(pid, dtype=np.int32)[order]),
            "prompt": pa.array(np.array(text, dtype=object)[order], pa.string()),
            "seed": pa.array(np.concatenate(seed).astype(np.int64)[order]),
            "reward": rewards,
        }
    )
    if rng.random() < 0.3:  # several chunks, as Parquet gives
        cut = int(rng.integers(0, t.num_rows + 1))
        t = pa.concat_tables([t.slice(0, cut), t.slice(cut)])
    return t


def assert_same(explore: pa.Table, k: int, on_short_prompt: str = "skip") -> pa.Table:
    fast, fast_stats = select_seeds(explore, k, on_short_prompt)
    ref, ref_stats = select_seeds_window(explore, k, on_short_prompt)
    assert fast.schema.equals(ref.schema, check_metadata=True), (fast.schema, ref.schema)
    assert fast.equals(ref, check_metadata=True), f"\nfast:\n{fast.to_pandas()}\nwindow:\n{ref.to_pandas()}"
    assert fast_stats == ref_stats
    return fast


@pytest.fixture
def tie_settling(monkeypatch):
    """Counts the prompts whose K/2 boundary tie the ties query settled."""
    seen = {"prompts": 0}
    fill = S._fill

    def spy(block, rows, start, values):
        seen["prompts"] += len(rows)
        return fill(block, rows, start, values)

    monkeypatch.setattr(S, "_fill", spy)
    return seen


@pytest.mark.parametrize("k", [2, 4, 24])
def test_fast_selection_equals_window_query_on_random_ties(k, tie_settling):
    rng = np.random.default_rng(1000 + k)
    for _ in range(40):
        t = random_explore(rng, k)
        assert S._fast_path_applies(t)
        fast = assert_same(t, k)
        # and the window SQL file itself, over the prompts kept
        kept = set(fast.column("prompt_id").to_pylist())
        mask = pa.array([p in kept for p in t.column("prompt_id").to_pylist()])
        assert fast.equals(window_sql(t.filter(mask), k), check_metadata=True)
    assert tie_settling["prompts"] > 20  # the boundary-tie path ran, many times


def test_fast_selection_keeps_each_rows_prompt_text():
    rng = np.random.default_rng(7)
    for k in (2, 24):
        for _ in range(10):
            assert_same(random_explore(rng, k, varying_prompt_text=True), k)


def test_exactly_k_finite_all_tied_splits_by_seed():
    # 24 finite candidates, one reward: top = the 12 smallest seeds, bottom = the 12 largest
    seeds = np.random.default_rng(3).permutation(np.arange(-12, 12)) * 1_000_003
    t = pa.table(
        {
            "prompt_id": pa.array([5] * 26, pa.int32()),
            "prompt": ["p"] * 26,
            "seed": pa.array(list(seeds) + [0, 1], pa.int64()),
            "reward": [0.5] * 24 + [float("nan"), None],
        }
    )
    sel = assert_same(t, 24, "error")
    got = sel.to_pydict()
    assert got["seed"] == sorted(int(s) for s in seeds)
    assert got["side"] == ["top"] * 12 + ["bottom"] * 12 and got["proxy_rank"] == list(range(1, 25))


def test_larger_tables_and_input_types():
    rng = np.random.default_rng(11)
    n, prompts = 96, 400
    pid = np.repeat(np.arange(prompts), n)
    seed = rng.integers(INT64_MIN, INT64_MAX, size=pid.size, endpoint=True)
    base = {"prompt_id": pid, "prompt": [f"prompt #{p}" for p in pid], "seed": seed}
    for reward in (rng.random(pid.size), rng.integers(0, 2, pid.size).astype(float), rng.integers(0, 5, pid.size) / 4):
        t = pa.table({**base, "reward": reward})  # int64 prompt_id, as stages.select builds it
        assert_same(t, 24)
        shuffled = t.take(rng.permutation(t.num_rows))
        assert_same(shuffled, 24)
        # float32 rewards, large_string / dictionary prompts, many chunks
        t32 = shuffled.set_column(3, "reward", shuffled["reward"].cast(pa.float32()))
        t32 = t32.set_column(1, "prompt", t32["prompt"].cast(pa.large_string()))
        assert S._fast_path_applies(t32)
        assert_same(pa.concat_tables([t32.slice(i, 5000) for i in range(0, t32.num_rows, 5000)]), 24)
        tdict = shuffled.set_column(1, "prompt", shuffled["prompt"].dictionary_encode())
        assert_same(tdict, 4)


def test_inputs_outside_the_fast_path_use_the_window_query():
    t = pa.table(
        {
            "prompt_id": pa.array([1] * 4 + [None] * 4, pa.int32()),
            "prompt": ["a"] * 8,
            "seed": [4, 3, 2, 1, 8, 7, 6, 5],
            "reward": [0.1, 0.2, 0.2, 0.4] * 2,
        }
    )
    assert not S._fast_path_applies(t)
    assert_same(t, 2)
    t = pa.table(
        {
            "prompt_id": [1] * 4,
            "prompt": ["a"] * 4,
            "seed": pa.array([4, None, 2, 1], pa.int64()),
            "reward": [0.1, 0.2, 0.2, 0.4],
        }
    )
    assert not S._fast_path_applies(t)
    assert_same(t, 2)


def test_short_prompts_empty_input_and_stats():
    rng = np.random.default_rng(5)
    t = random_explore(rng, 4, prompts=5)
    # make prompt id -4 (p = 0) short: drop all but 3 of its rows
    rows = np.flatnonzero(t.column("prompt_id").to_numpy() == -4)
    keep = np.ones(t.num_rows, dtype=bool)
    keep[rows[3:]] = False
    short = t.filter(pa.array(keep))
    with pytest.raises(ShortPromptError, match="prompt -4 has only"):
        select_seeds(short, 4)
    sel = assert_same(short, 4, "skip")
    assert -4 not in sel.column("prompt_id").to_pylist()
    assert select_seeds(short, 4, "skip")[1]["skipped_prompts"] == [-4]
    empty = t.slice(0, 0)
    sel, stats = select_seeds(empty, 24)
    assert sel.num_rows == 0 and sel.schema == S.SELECTED_SCHEMA and stats == {"non_finite": 0, "skipped_prompts": []}
    assert_same(empty, 24)
    with pytest.raises(ValueError, match="even"):
        select_seeds(t, 5)
