"""Which explore engine a run uses on this machine: what run.json records beside `model.dtype`.

The explore's numerics can depend on the machine as well as on the config: `explore.precision:
int8` runs on the quantised engine torch picks for this CPU (oneDNN or fbgemm: another
activation range, other numbers), and `explore.emulation_output: auto` resolves to bfloat16 or
float32 by the CPU. `explore_engine` says what the run's explore resolves to here. It is a
record, not part of the config hash: the hashed config and `model.dtype`'s resolution already
decide it on a given machine, and keeping it out keeps every existing run's hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Resolved, RunConfig


def explore_engine(cfg: RunConfig, resolved: Resolved) -> dict | None:
    """{"precision", and "engine" (int8: torch.backends.quantized engine), "backend" and "output"
    (nvfp4/fp8: emulated with float32 or bfloat16 output, or transformer_engine), or "dtype"
    (high: the unquantised copy in the resolved model dtype)}; None for a mode without explore."""
    from ..plan import primary_explore

    spec = primary_explore(cfg)
    if spec is None:
        return None
    if not spec.low_precision:
        return {"precision": "high", "dtype": resolved.dtype}
    if spec.precision == "int8":
        from .int8 import int8_engine

        return {"precision": "int8", "engine": int8_engine()}
    if cfg.explore.backend != "emulated":
        return {"precision": spec.precision, "backend": cfg.explore.backend}
    from .config import emulation_output

    setting = cfg.explore.emulation_output if spec.precision == "nvfp4" else "float32"
    return {
        "precision": spec.precision,
        "backend": "emulated",
        "output": emulation_output(setting, resolved.dtype, resolved.device),
    }
