import random

import pytest
import torch

from solrl.shapes.prompts import (
    COLOURS,
    HELD_OUT_COMBOS,
    SHAPES,
    Scene,
    eval_prompts,
    pairing,
    parse,
    tokenize,
    train_prompts,
)
from solrl.shapes.render import render
from solrl.shapes.reward import shapes_reward, shapes_strict


def _sample_prompts(n, seed=0, pool=None):
    rng = random.Random(seed)
    pool = pool or train_prompts()
    return [rng.choice(pool) for _ in range(n)]


def test_grammar_round_trip_and_split():
    train, held = train_prompts(), eval_prompts()
    assert len(train) + len(held) == 5 * 3 * 4 + 5 * 4 * 3 * 3 * 4
    assert set(train).isdisjoint(held)
    assert any(parse(p).n_objects == 1 for p in held) and any(parse(p).n_objects == 2 for p in held)
    for p in train[:50] + held[:50]:
        assert parse(p).text() == p
    assert train == train_prompts()  # deterministic
    assert all(len(ids) == 12 for ids in tokenize(train[:5]))


def _mirror(p: str) -> str:
    s = parse(p)
    flip = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
    return Scene(s.colours[::-1], s.shapes[::-1], relation=flip[s.relation]).text()


def test_split_is_compositional_no_mirror_leak():
    train, held = set(train_prompts()), set(eval_prompts())
    two = [p for p in held if parse(p).n_objects == 2]
    assert two and all(_mirror(p) in held and _mirror(p) not in train for p in two)
    # every relation of a held-out pair of objects is held out: the pair itself is unseen
    assert {pairing(parse(p)) for p in train}.isdisjoint(pairing(parse(p)) for p in held)
    # the held-out colour–shape combinations never appear in any training prompt
    seen = {obj for p in train for obj in zip(parse(p).colours, parse(p).shapes)}
    assert HELD_OUT_COMBOS and seen.isdisjoint(HELD_OUT_COMBOS)
    assert all(
        len(set(zip(parse(p).colours, parse(p).shapes)) & set(HELD_OUT_COMBOS)) or parse(p).n_objects == 2 for p in held
    )


def test_bad_prompt_is_one_clear_sentence():
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        parse("a pink hexagon on the left")


def test_ground_truth_scores_high_and_shuffled_low():
    prompts = _sample_prompts(300)
    images = render(prompts, torch.Generator().manual_seed(3))
    r = shapes_reward(images, prompts)
    assert r.min() > 0.9 and r.mean() > 0.97
    assert shapes_strict(images, prompts).mean() == 1.0
    shuffled = prompts[1:] + prompts[:1]
    assert shapes_reward(images, shuffled).mean() < 0.45
    assert shapes_reward(torch.full_like(images[:4], -1.0), prompts[:4]).max() < 0.05


def _corrupt(prompt: str, attribute: str) -> str:
    s = parse(prompt)
    if attribute == "colour":
        c = [x for x in COLOURS if x not in s.colours][0]
        return s.text().replace(f"a {s.colours[0]} ", f"a {c} ", 1)
    if attribute == "shape":
        sh = [x for x in SHAPES if x != s.shapes[0]][0]
        return s.text().replace(f"{s.colours[0]} {s.shapes[0]}", f"{s.colours[0]} {sh}", 1)
    if attribute == "position":
        flip = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
        return s.text().replace(f"on the {s.position}", f"on the {flip[s.position]}")
    if attribute == "relation":
        flip = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
        from solrl.shapes.prompts import Scene

        return Scene(s.colours, s.shapes, relation=flip[s.relation]).text()
    raise AssertionError(attribute)


@pytest.mark.parametrize(
    "attribute,kind", [("colour", 1), ("shape", 1), ("position", 1), ("colour", 2), ("shape", 2), ("relation", 2)]
)
def test_each_single_attribute_corruption_lowers_reward(attribute, kind):
    pool = [p for p in train_prompts() if parse(p).n_objects == kind]
    prompts = _sample_prompts(60, seed=7, pool=pool)
    images = render(prompts, torch.Generator().manual_seed(5))
    good = shapes_reward(images, prompts)
    bad = shapes_reward(images, [_corrupt(p, attribute) for p in prompts])
    assert (bad < good - 0.05).float().mean() > 0.95, (attribute, kind)


def test_extra_object_lowers_count_score():
    one = [p for p in train_prompts() if parse(p).n_objects == 1][:20]
    images = render(one, torch.Generator().manual_seed(1))
    # paint a stray green/blue blob into the corner of each image
    stray = images.clone()
    for i, p in enumerate(one):
        c = "green" if parse(p).colours[0] != "green" else "blue"
        from solrl.shapes.render import PALETTE

        rgb = torch.tensor(PALETTE[c], dtype=torch.float32) / 127.5 - 1
        stray[i, :, 26:31, 26:31] = rgb.view(3, 1, 1)
    assert (shapes_reward(stray, one) < shapes_reward(images, one) - 0.05).all()
    assert shapes_strict(stray, one).sum() == 0


def test_reward_is_continuous_in_pixels():
    prompts = _sample_prompts(100, seed=11)
    images = render(prompts, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    small = (images + 0.02 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    delta = (shapes_reward(small, prompts) - shapes_reward(images, prompts)).abs()
    assert delta.max() < 0.03
    # and model-like blur/noise gives distinct, untied rewards
    blurred = torch.nn.functional.avg_pool2d(images, 3, 1, 1) + 0.2 * torch.randn(images.shape, generator=g)
    r = shapes_reward(blurred.clamp(-1, 1), prompts)
    assert len(set(r.tolist())) == len(prompts)
