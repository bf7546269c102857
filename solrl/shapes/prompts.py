"""The prompt grammar of the shapes world.

Two kinds of prompt:

* one object with a position:   "a red circle on the left"
* two objects with a relation:  "a blue square above a yellow triangle" (colours differ)

Every prompt parses back into a :class:`Scene` (the attributes the reward checks), so the
renderer, the reward and the text encoder all agree on one vocabulary.

The held-out evaluation set is compositional: whole (colour, shape) pairings for one-object
prompts and whole (colour1, shape1, colour2, shape2) pairings for two-object prompts are kept
out of training, in every position/relation. The split is a keyed hash, so it never changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

# Surface forms of relations (what the prompt says) -> canonical relation name.
_RELATION_WORDS = {"above": "above", "below": "below", "to the left of": "left of", "to the right of": "right of"}
_RELATION_TEXT = {v: k for k, v in _RELATION_WORDS.items()}

# Fraction of pairings held out for evaluation.
HELD_OUT_FRACTION = 0.15


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


def _held_out(key: str) -> bool:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"shapesplit").digest(), "big")
    return (h % 10_000) < HELD_OUT_FRACTION * 10_000


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


def _pairing(scene: Scene) -> str:
    return "|".join(f"{c}-{s}" for c, s in zip(scene.colours, scene.shapes))


@lru_cache(maxsize=None)
def prompt_sets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training prompts, held-out evaluation prompts), each sorted, disjoint by pairing."""
    train, held = [], []
    for scene in _all_scenes():
        (held if _held_out(_pairing(scene)) else train).append(scene.text())
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
