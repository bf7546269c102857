"""Rule-based rewards of the shapes world.

`shapes` (training) is continuous in [0, 1]: a small change of pixels gives a small change of
reward, so candidates of one prompt rarely tie and rank statistics mean something. It is the
mean of soft per-attribute scores, every one a smooth function of the image:

1. Soft colour membership. Each pixel is split between the five palette colours and the
   background by a softmax over negative squared RGB distances (temperature TAU): a pixel
   half-way between red and blue counts half for each.
2. Per colour c: mass M_c (sum of memberships) and centre of mass (x_c, y_c).
3. Scores, per requested object of colour c and shape s:
   - colour present:  1 - exp(-M_c / MASS_SCALE);
   - shape:           the soft IoU of the colour's membership map with an anti-aliased
                      template of shape s of the same area at the same centre of mass,
                      against the best other shape: presence * sigmoid((IoU_s - IoU_other) / SHAPE_TAU)
                      * min(1, IoU_s / IOU_GOOD);
   - position (one object), e.g. "left": presence * sigmoid((16 - POS_MARGIN - x_c) / POS_TAU);
   - relation (two objects), e.g. "A above B": presences * sigmoid((y_B - y_A - REL_MARGIN) / POS_TAU);
   - count: presences * exp(-(mass of colours not asked for) / STRAY_SCALE).
   One object: mean of [colour, shape, position, count]; two: mean of [c1, s1, c2, s2,
   relation, count].

`shapes_strict` is GenEval-style: 1 iff every attribute holds on hard thresholds of the same
measurements (colour mass >= MIN_MASS, target shape has the best IoU, the centre of mass on the
right side by a margin, the relation by a margin, stray mass < MIN_MASS), else 0.
"""

from __future__ import annotations

import torch

from .prompts import COLOURS, SHAPES, Scene, parse
from .render import RESOLUTION, palette_tensor

TAU = 30.0  # RGB distance temperature of the soft colour membership (0..255 units)
MASS_SCALE = 8.0  # px: presence saturates well below an object's 30-120 px
STRAY_SCALE = 15.0  # px of colours nobody asked for that cost 1/e of the count score
MIN_MASS = 12.0  # px: strict presence / stray threshold
SHAPE_TAU = 0.015  # IoU margin scale of the shape score
IOU_GOOD = 0.70  # soft IoU with the own template that counts as a clean shape
POS_MARGIN = 2.0  # px away from the centre line for "left" etc.
REL_MARGIN = 3.0  # px of separation for "above" etc.
POS_TAU = 1.2  # px
EDGE = 0.35  # px: anti-aliasing width of the templates


def memberships(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> soft membership [B, 6, H, W] (5 colours + background)."""
    rgb = ((images.float().clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1)  # [B, H, W, 3]
    pal = palette_tensor().to(rgb.device)
    d2 = ((rgb[..., None, :] - pal) ** 2).sum(-1)  # [B, H, W, 6]
    return torch.softmax(-d2 / (2 * TAU**2), dim=-1).permute(0, 3, 1, 2)


def _templates(mass: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Anti-aliased circle/square/triangle of area `mass` centred (by mass) at (cx, cy).
    Inputs [...]; output [..., 3, H, W]."""
    c = torch.arange(RESOLUTION, dtype=mass.dtype, device=mass.device) + 0.5
    dx = c.view(*([1] * mass.dim()), 1, -1) - cx[..., None, None]  # [..., 1, W]
    dy = c.view(*([1] * mass.dim()), -1, 1) - cy[..., None, None]  # [..., H, 1]
    m = mass.clamp_min(1.0)[..., None, None]
    r = torch.sqrt(m / torch.pi)
    circle = r - torch.sqrt(dx**2 + dy**2)
    a2 = torch.sqrt(m) / 2
    square = a2 - torch.maximum(dx.abs(), dy.abs())
    h = torch.sqrt(2 * m)  # base = height = h, area h^2 / 2
    apex = -2 * h / 3
    base = h / 3 - dy
    sides = ((dy - apex) - 2 * dx.abs()) / 5**0.5
    triangle = torch.minimum(base.expand_as(sides), sides)
    sd = torch.stack(torch.broadcast_tensors(circle, square, triangle), dim=-3)
    return torch.sigmoid(sd / EDGE)


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-colour measurements: mass, centre of mass and soft IoU with each shape template.
    Shapes: mass/cx/cy [B, 5]; iou [B, 5, 3]."""
    mem = memberships(images)[:, :5]  # [B, 5, H, W]
    c = torch.arange(RESOLUTION, dtype=mem.dtype, device=mem.device) + 0.5
    mass = mem.sum((-1, -2))
    safe = mass.clamp_min(1e-6)
    cx = (mem * c.view(1, 1, 1, -1)).sum((-1, -2)) / safe
    cy = (mem * c.view(1, 1, -1, 1)).sum((-1, -2)) / safe
    t = _templates(mass, cx, cy)  # [B, 5, 3, H, W]
    m = mem[:, :, None]
    inter = torch.minimum(m, t).sum((-1, -2))
    union = torch.maximum(m, t).sum((-1, -2)).clamp_min(1e-6)
    return {"mass": mass, "cx": cx, "cy": cy, "iou": inter / union}


def _position_margin(pos: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mid = RESOLUTION / 2
    return {"left": mid - x, "right": x - mid, "top": mid - y, "bottom": y - mid}[pos] - POS_MARGIN


def _relation_margin(rel: str, xa, ya, xb, yb) -> torch.Tensor:
    return {"above": yb - ya, "below": ya - yb, "left of": xb - xa, "right of": xa - xb}[rel] - REL_MARGIN


def attribute_scores(images: torch.Tensor, scenes: list[Scene]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """For each image: {attribute: (soft score, strict pass)} as 0-d tensors."""
    meas = measure(images)
    out = []
    for i, s in enumerate(scenes):
        att: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        asked = [COLOURS.index(c) for c in s.colours]
        for k, (ci, shape) in enumerate(zip(asked, s.shapes)):
            mass = meas["mass"][i, ci]
            presence = 1 - torch.exp(-mass / MASS_SCALE)
            att[f"colour{k}"] = (presence, mass >= MIN_MASS)
            iou = meas["iou"][i, ci]
            si = SHAPES.index(shape)
            other = torch.cat([iou[:si], iou[si + 1 :]]).max()
            soft = presence * torch.sigmoid((iou[si] - other) / SHAPE_TAU) * (iou[si] / IOU_GOOD).clamp(max=1.0)
            att[f"shape{k}"] = (soft, (iou[si] > other) & (mass >= MIN_MASS))
        x, y = meas["cx"][i], meas["cy"][i]
        if s.n_objects == 1:
            margin = _position_margin(s.position, x[asked[0]], y[asked[0]])
            present = 1 - torch.exp(-meas["mass"][i, asked[0]] / MASS_SCALE)
            att["position"] = (present * torch.sigmoid(margin / POS_TAU), (margin > 0) & (present > 0.5))
        else:
            a, b = asked
            margin = _relation_margin(s.relation, x[a], y[a], x[b], y[b])
            present = (1 - torch.exp(-meas["mass"][i, asked] / MASS_SCALE)).prod()
            att["relation"] = (present * torch.sigmoid(margin / POS_TAU), (margin > 0) & (present > 0.5))
        stray = meas["mass"][i].sum() - meas["mass"][i, asked].sum()
        # "Exactly the objects asked for": no stray colours, and none of the asked ones missing.
        all_present = (1 - torch.exp(-meas["mass"][i, asked] / MASS_SCALE)).prod()
        att["count"] = (all_present * torch.exp(-stray / STRAY_SCALE), stray < MIN_MASS)
        out.append(att)
    return out


def _scenes(prompts: list[str] | tuple[str, ...], n: int) -> list[Scene]:
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts: pass one prompt per image")
    return [parse(p) for p in prompts]


@torch.no_grad()
def shapes_reward(images: torch.Tensor, prompts: list[str] | tuple[str, ...]) -> torch.Tensor:
    """Continuous reward in [0, 1], float64 [B]."""
    atts = attribute_scores(images, _scenes(prompts, images.shape[0]))
    return torch.stack([torch.stack([v[0] for v in a.values()]).mean() for a in atts]).double()


@torch.no_grad()
def shapes_strict(images: torch.Tensor, prompts: list[str] | tuple[str, ...]) -> torch.Tensor:
    """1.0 iff every attribute holds (GenEval-style), else 0.0; float64 [B]."""
    atts = attribute_scores(images, _scenes(prompts, images.shape[0]))
    return torch.stack([torch.stack([v[1] for v in a.values()]).all() for a in atts]).double()


def build(name: str):
    """The registry's entry point: `shapes` (continuous) or `shapes_strict` (all attributes right)."""
    return shapes_reward if name == "shapes" else shapes_strict


def check(name: str) -> None:
    """Built in: always available."""
