"""The prompt grammar of the shapes world.

Two kinds of prompt:

* one object with a position:   "a red circle on the left"
* two objects with a relation:  "a blue square above a yellow triangle" (colours differ)

Every prompt parses back into a :class:`Scene` (the attributes the reward checks), so the
renderer, the reward and the text encoder all agree on one vocabulary.

The held-out split is compositional, so held-out prompts measure generalisation, not word order:

* a few colour–shape combinations (``HELD_OUT_COMBOS``) never appear in training, in any prompt;
* two-object prompts are split by their *unordered* pair of objects: "a blue circle above a
  green triangle", its mirror "a green triangle below a blue circle" and every other relation
  of the same two objects land on the same side (a keyed hash picks ~10 % of the pairs).

The split is a pure function of the grammar, so it never changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

# Surface forms of relations (what the prompt says) -> canonical relation name.
_RELATION_WORDS = {"above": "above", "below": "below", "to the left of": "left of", "to the right of": "right of"}
_RELATION_TEXT = {v: k for k, v in _RELATION_WORDS.items()}

# Colour–shape combinations never seen in training (in one- or two-object prompts).
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (("green", "triangle"), ("purple", "circle"))
# Fraction of the remaining unordered two-object pairs held out for evaluation.
HELD_OUT_PAIR_FRACTION = 0.10


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for. `position` is set for one object, `relation` for two."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    position: str | None = None
    relation: str | None = None

    @property
    def n_objects(self) -> int:
        return len(self.colours)

    def text(self) -> str:
        if self.n_objects == 1:
            return f"a {self.colours[0]} {self.shapes[0]} on the {self.position}"
        rel = _RELATION_TEXT[self.relation]
        return f"a {self.colours[0]} {self.shapes[0]} {rel} a {self.colours[1]} {self.shapes[1]}"


def parse(prompt: str) -> Scene:
    """Parse a prompt of the grammar; raise ValueError with the offending prompt otherwise."""
    words = prompt.strip().lower().split()
    try:
        if len(words) == 6 and words[0] == "a" and words[3:5] == ["on", "the"]:
            scene = Scene((words[1],), (words[2],), position=words[5])
        else:
            assert words[0] == "a"
            c1, s1 = words[1], words[2]
            rest = words[3:]
            a = rest.index("a")
            rel = _RELATION_WORDS[" ".join(rest[:a])]
            c2, s2 = rest[a + 1 :]
            scene = Scene((c1, c2), (s1, s2), relation=rel)
        ok = all(c in COLOURS for c in scene.colours) and all(s in SHAPES for s in scene.shapes)
        ok = ok and (scene.position in POSITIONS if scene.n_objects == 1 else True)
        ok = ok and (scene.n_objects == 1 or scene.colours[0] != scene.colours[1])
        if not ok:
            raise ValueError
    except (AssertionError, ValueError, KeyError, IndexError):
        raise ValueError(
            f"prompt {prompt!r} is not in the shapes grammar: write 'a <colour> <shape> on the "
            f"<left|right|top|bottom>' or 'a <colour> <shape> <above|below|to the left of|to the "
            f"right of> a <other colour> <shape>' with colours {COLOURS} and shapes {SHAPES}"
        ) from None
    return scene


def _hash_fraction(key: str) -> float:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"shapesplit").digest(), "big")
    return (h % 10_000) / 10_000


def _all_scenes() -> list[Scene]:
    scenes = [Scene((c,), (s,), position=p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    for c1 in COLOURS:
        for c2 in COLOURS:
            if c1 == c2:
                continue
            for s1 in SHAPES:
                for s2 in SHAPES:
                    for r in RELATIONS:
                        scenes.append(Scene((c1, c2), (s1, s2), relation=r))
    return scenes


def pairing(scene: Scene) -> str:
    """The scene's objects, order-free: a prompt and its mirror (or any other relation or
    position of the same objects) share it. "blue-circle|green-triangle", "red-square"."""
    return "|".join(sorted(f"{c}-{s}" for c, s in zip(scene.colours, scene.shapes)))


def is_held_out(scene: Scene) -> bool:
    if any(combo in HELD_OUT_COMBOS for combo in zip(scene.colours, scene.shapes)):
        return True
    return scene.n_objects == 2 and _hash_fraction(pairing(scene)) < HELD_OUT_PAIR_FRACTION


@cache
def prompt_sets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training prompts, held-out evaluation prompts), each sorted, disjoint by pairing."""
    train, held = [], []
    for scene in _all_scenes():
        (held if is_held_out(scene) else train).append(scene.text())
    return tuple(sorted(train)), tuple(sorted(held))


def train_prompts() -> tuple[str, ...]:
    return prompt_sets()[0]


def eval_prompts() -> tuple[str, ...]:
    return prompt_sets()[1]


# --- the vocabulary of the text encoder -------------------------------------------------
PAD, NULL = "<pad>", "<null>"
VOCAB: tuple[str, ...] = (PAD, NULL, "a", "on", "the", "to", "of", *COLOURS, *SHAPES, *POSITIONS, "above", "below")
MAX_TOKENS = 12


def tokenize(prompts: list[str] | tuple[str, ...]) -> list[list[int]]:
    """Word-level token ids, padded with PAD to MAX_TOKENS. An empty prompt is the NULL token."""
    index = {w: i for i, w in enumerate(VOCAB)}
    out = []
    for p in prompts:
        words = p.strip().lower().split() or [NULL]
        unknown = [w for w in words if w not in index]
        if unknown:
            raise ValueError(f"prompt {p!r} uses words outside the shapes vocabulary: {unknown}")
        ids = [index[w] for w in words][:MAX_TOKENS]
        out.append(ids + [0] * (MAX_TOKENS - len(ids)))
    return out
