"""Vectorised ground-truth renderer of the shapes world (32x32 RGB in [-1, 1]).

An object is (colour, shape, cx, cy, size): (cx, cy) is the centre of mass in pixel units
(pixel i covers [i, i+1)), `size` the side of its bounding box. Placing objects by their
centre of mass keeps "on the left" / "above" meaning the same thing for the renderer and the
reward (which measures centres of mass).
"""

from __future__ import annotations

import torch

from .prompts import COLOURS, POSITIONS, RELATIONS, SHAPES, Scene, parse

RESOLUTION = 32
# RGB 0..255. Saturated and far apart so colour is easy to read back.
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 50),
    "purple": (160, 60, 200),
}
BACKGROUND = (20, 20, 20)
SIZE_RANGE = (8.0, 11.0)
# Where a centre of mass may fall: near side band and the free axis range.
NEAR = (6.0, 10.0)
FAR = (22.0, 26.0)
FREE = (9.0, 23.0)


def palette_tensor() -> torch.Tensor:
    """[6, 3] float32 in 0..255: the five colours then the background."""
    return torch.tensor([PALETTE[c] for c in COLOURS] + [BACKGROUND], dtype=torch.float32)


def _grid(res: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(res, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx, yy


def shape_masks(shape_idx: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Hard masks [B, H, W] (bool) for a batch of objects."""
    xx, yy = _grid()
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    half = (size / 2)[:, None, None]
    circle = dx**2 + dy**2 <= half**2
    square = (dx.abs() <= half) & (dy.abs() <= half)
    # Upright triangle, base = height = size, centre of mass at (cx, cy): apex 2h/3 above it.
    h = size[:, None, None]
    apex = -2.0 * h / 3.0
    triangle = (dy <= h / 3.0) & (dy >= apex) & (dx.abs() <= (dy - apex) / 2.0)
    stack = torch.stack([circle, square, triangle], dim=1)  # [B, 3, H, W]
    return stack.gather(1, shape_idx.long()[:, None, None, None].expand(-1, 1, *xx.shape)).squeeze(1)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def layout(scenes: list[Scene], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random object parameters that satisfy each scene. Returns tensors of shape [B, 2]
    (second object slot unused, size 0, for one-object scenes)."""
    n = len(scenes)
    near = _uniform(generator, 2 * n, *NEAR).view(n, 2)
    far = _uniform(generator, 2 * n, *FAR).view(n, 2)
    free = _uniform(generator, 2 * n, *FREE).view(n, 2)
    size = _uniform(generator, 2 * n, *SIZE_RANGE).view(n, 2)
    cx = torch.zeros(n, 2)
    cy = torch.zeros(n, 2)
    colour = torch.zeros(n, 2, dtype=torch.long)
    shape = torch.zeros(n, 2, dtype=torch.long)
    for i, s in enumerate(scenes):
        for k in range(s.n_objects):
            colour[i, k] = COLOURS.index(s.colours[k])
            shape[i, k] = SHAPES.index(s.shapes[k])
        if s.n_objects == 1:
            size[i, 1] = 0.0
            p = s.position
            if p in ("left", "right"):
                cx[i, 0] = near[i, 0] if p == "left" else far[i, 0]
                cy[i, 0] = free[i, 0]
            else:
                cy[i, 0] = near[i, 0] if p == "top" else far[i, 0]
                cx[i, 0] = free[i, 0]
        else:
            # Object 0 is the subject: "A above B" puts A in the near band of y, B in the far.
            first, second = (near[i, 0], far[i, 1])
            if s.relation in ("below", "right of"):
                first, second = far[i, 0], near[i, 1]
            # The free axis: both objects somewhere in the middle band, independently.
            f0, f1 = free[i, 0], free[i, 1]
            if s.relation in ("above", "below"):
                cy[i, 0], cy[i, 1], cx[i, 0], cx[i, 1] = first, second, f0, f1
            else:
                cx[i, 0], cx[i, 1], cy[i, 0], cy[i, 1] = first, second, f0, f1
    return {"colour": colour, "shape": shape, "cx": cx, "cy": cy, "size": size}


def render_layout(lay: dict[str, torch.Tensor]) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] from layout tensors (objects with size 0 are absent)."""
    n = lay["cx"].shape[0]
    pal = palette_tensor()
    img = pal[-1].view(1, 3, 1, 1).expand(n, 3, RESOLUTION, RESOLUTION).clone()
    for k in range(lay["cx"].shape[1]):
        present = lay["size"][:, k] > 0
        mask = shape_masks(lay["shape"][:, k], lay["cx"][:, k], lay["cy"][:, k], lay["size"][:, k])
        mask = mask & present[:, None, None]
        col = pal[lay["colour"][:, k]][:, :, None, None]
        img = torch.where(mask[:, None], col, img)
    return img / 127.5 - 1.0


def render(prompts: list[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Ground-truth images for prompts of the grammar, [B, 3, 32, 32] in [-1, 1]."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return render_layout(layout([parse(p) for p in prompts], g))


__all__ = [
    "PALETTE",
    "BACKGROUND",
    "RESOLUTION",
    "POSITIONS",
    "RELATIONS",
    "render",
    "render_layout",
    "layout",
    "palette_tensor",
    "shape_masks",
]
