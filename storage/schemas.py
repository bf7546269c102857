"""Arrow schemas of every artifact (docs/design.md, "Iteration data, as committed"), declared once.

Reward columns are dynamic: one `reward_<name>` float64 column per configured reward, after the
fixed columns. Every file also carries `run_id` and `iteration`.
"""

from __future__ import annotations

import pyarrow as pa

COMMON = [pa.field("run_id", pa.string()), pa.field("iteration", pa.int32())]
PROMPT_ID, PROMPT, SEED = (
    pa.field("prompt_id", pa.int32()),
    pa.field("prompt", pa.string()),
    pa.field("seed", pa.int64()),
)
SAMPLE = [pa.field("precision", pa.string()), pa.field("steps", pa.int16()), pa.field("reward", pa.float64())]

EXPLORE = COMMON + [PROMPT_ID, PROMPT, pa.field("candidate", pa.int32()), SEED] + SAMPLE
EXPLORE_TAIL = [
    pa.field("duration_ms", pa.float32()),
    pa.field("worker", pa.string()),
    pa.field("thumbnail", pa.binary()),
    pa.field("x0", pa.binary()),
    pa.field("x0_shape", pa.list_(pa.int32())),
]

# What the selection query returns (storage/selection.py); the stored file adds COMMON.
SELECTION = [
    PROMPT_ID,
    PROMPT,
    SEED,
    pa.field("side", pa.string()),
    pa.field("proxy_rank", pa.int32()),
    pa.field("proxy_reward", pa.float64()),
]
SELECTED = COMMON + SELECTION

REGENERATE = SELECTED + SAMPLE
REGENERATE_TAIL = [
    pa.field("image", pa.binary()),
    pa.field("x0", pa.binary()),
    pa.field("x0_shape", pa.list_(pa.int32())),
    pa.field("duration_ms", pa.float32()),
    pa.field("worker", pa.string()),
]

EVAL = COMMON + [pa.field("set", pa.string()), PROMPT_ID, PROMPT, SEED, pa.field("reward", pa.float64())]
EVAL_TAIL = [
    pa.field("image", pa.binary()),
    pa.field("worker", pa.string()),
]  # worker: host:pid of the shard (eval runs on the Dask workers)

# Audit: every explored seed of an audited prompt, regenerated in high precision, beside its proxy.
AUDIT = COMMON + [
    PROMPT_ID,
    PROMPT,
    pa.field("candidate", pa.int32()),
    SEED,
    pa.field(
        "proxy", pa.string()
    ),  # "explore": this iteration's explore; "primary": the configured one, re-run when the guard fell back
    pa.field("proxy_precision", pa.string()),
    pa.field("proxy_steps", pa.int16()),
    pa.field("proxy_reward", pa.float64()),
    pa.field("proxy_rank", pa.int32()),
    pa.field("selected", pa.bool_()),
    pa.field("reward", pa.float64()),
]
AUDIT_TAIL = [pa.field("duration_ms", pa.float32()), pa.field("worker", pa.string())]


def _with_rewards(head: list[pa.Field], tail: list[pa.Field], reward_names: list[str]) -> pa.Schema:
    return pa.schema(head + [pa.field(f"reward_{n}", pa.float64()) for n in reward_names] + tail)


def explore_schema(reward_names: list[str]) -> pa.Schema:
    return _with_rewards(EXPLORE, EXPLORE_TAIL, reward_names)


def selected_schema() -> pa.Schema:
    return pa.schema(SELECTED)


def regenerate_schema(reward_names: list[str]) -> pa.Schema:
    return _with_rewards(REGENERATE, REGENERATE_TAIL, reward_names)


def eval_schema(reward_names: list[str]) -> pa.Schema:
    return _with_rewards(EVAL, EVAL_TAIL, reward_names)


def audit_schema(reward_names: list[str]) -> pa.Schema:
    return _with_rewards(AUDIT, AUDIT_TAIL, reward_names)


def to_table(columns: dict[str, list], schema: pa.Schema, run_id: str, iteration: int) -> pa.Table:
    """Build a table in `schema` order from columns; missing optional columns become nulls."""
    n = len(next(iter(columns.values()))) if columns else 0
    data = {"run_id": [run_id] * n, "iteration": [iteration] * n, **columns}
    arrays = []
    for f in schema:
        values = data.get(f.name)
        arrays.append(pa.array(values if values is not None else [None] * n, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
