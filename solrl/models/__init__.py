"""Model families behind one small interface (see base.Policy)."""

from __future__ import annotations

from .base import Policy


def load_policy(family: str, **kw) -> Policy:
    if family == "shapes":
        from .shapes import ShapesPolicy

        return ShapesPolicy(**kw)
    raise ValueError(f"unknown model family {family!r}: this version ships 'shapes' (flux, sd3 and sana adapters are tracked separately)")


__all__ = ["Policy", "load_policy"]
