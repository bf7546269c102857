"""benchmarks/study.py: the two-level bootstrap, the equivalence margin, the parity levels and
clocks on a synthetic study with known effects (written through the script's own Parquet writer),
and the replot of the committed study data reproducing its committed outputs byte for byte."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import study as S  # noqa: E402

COMMITTED = REPO / "benchmarks" / "results" / "study"
SLOPE = {"sol_rl": 0.01, "naive_scaling": 0.01, "diffusionnft": 0.01, "naive_quant": 0.004}
SECONDS = {"sol_rl": 2.0, "naive_scaling": 6.0, "diffusionnft": 3.0, "naive_quant": 1.5}  # explore stage, per iteration
FORWARDS = {  # (high, low) of the explore stage
    "sol_rl": (0.0, 1000.0),
    "naive_scaling": (2000.0, 0.0),
    "diffusionnft": (0.0, 0.0),
    "naive_quant": (0.0, 2000.0),
}
SEEDS, ITERATIONS, EVALS = (0, 1, 2, 3), 9, (0, 4, 8)
SETS = {"train": (4, 4), "held_out": (6, 3)}  # prompts, eval seeds per prompt


EXTRA = {  # variant: (slope, explore_n, prompts_pool, train set (prompts, eval seeds))
    "sol_rl_N32": (0.012, 32, 4, SETS["train"]),
    "sol_rl_pool8": (0.012, 16, 8, (8, 4)),
}


def synthetic(folder: Path, extra: bool = False) -> Path:
    """Runs whose gain grows linearly with the iteration at SLOPE[variant]; naive_scaling's rewards
    are sol_rl's (same training seed) exactly; diffusionnft has the same mean curve with its own
    noise; one naive_scaling iteration stalls (100 s)."""
    rng = np.random.default_rng(7)
    base = {s: rng.uniform(0.3, 0.7, size=p * e) for s, (p, e) in SETS.items()}
    base["train8"] = rng.uniform(0.3, 0.7, size=32)
    prompt_effect = {s: rng.normal(0, 0.01, size=p) for s, (p, e) in SETS.items()}
    prompt_effect["train8"] = rng.normal(0, 0.01, size=8)
    variants = {v: (SLOPE[v], 16, 4, SETS["train"]) for v in S.MODES}
    if extra:
        variants.update(EXTRA)
    pairs, timings, audit, meta = [], [], [], {}
    noise: dict = {}
    for v, (slope, n_explore, pool, train_set) in variants.items():
        for seed in SEEDS if v in S.MODES else SEEDS[:3]:
            run = f"{v}-seed{seed}"
            src = "sol_rl" if v == "naive_scaling" else v  # naive_scaling: the very same rewards as sol_rl
            meta[run] = {
                "variant": v,
                "mode": v,
                "training_seed": seed,
                "config_hash": "x",
                "explore_n": n_explore,
                "select_k": 8,
                "prompts_pool": pool,
                "iterations_complete": ITERATIONS,
                "evaluated": list(EVALS),
            }
            for s, (n_p, n_e) in (("train", train_set), ("held_out", SETS["held_out"])):
                b = "train8" if n_p == 8 else s
                for it in (-1, *EVALS):
                    key = (src, seed, s, it)
                    if key not in noise:
                        seed_shift = rng.normal(0, 0.003)
                        noise[key] = (
                            seed_shift + np.repeat(prompt_effect[b], n_e) * (it >= 0) + rng.normal(0, 0.02, n_p * n_e)
                        )
                    r = base[b] + (0.0 if it < 0 else slope * (it + 1) + noise[key])
                    for j in range(n_p * n_e):
                        pairs.append(
                            {
                                "run": run,
                                "variant": v,
                                "mode": v,
                                "training_seed": seed,
                                "iteration": it,
                                "set": s,
                                "prompt_id": 100 + j // n_e,
                                "eval_seed": 1000 * (j // n_e) + j % n_e,
                                "reward": float(np.float32(r[j])),
                                "strict": float(r[j] > 0.6),
                            }
                        )
            for it in range(ITERATIONS):
                stall = 100.0 if (v == "naive_scaling" and seed == 1 and it == 3) else 0.0
                hi, lo = FORWARDS.get(v, FORWARDS["sol_rl"])
                for st, sec, fh, fl in (
                    ("explore", SECONDS.get(v, SECONDS["sol_rl"]) + stall, hi, lo),
                    ("update", 1.0, 500.0, 0.0),
                    ("eval", 50.0, 0.0, 0.0),
                ):
                    timings.append(
                        {
                            "run": run,
                            "iteration": it,
                            "stage": st,
                            "seconds": sec,
                            "started_at": 1.0e9 + it,
                            "worker": "vm:1",
                            "forwards_high": fh,
                            "forwards_low": fl,
                        }
                    )
                if v.startswith("sol_rl"):
                    truth = rng.permutation(16)
                    for c in range(16):
                        t = int(truth[c]) + 1  # true rank
                        proxy_rank = t if t <= 12 else 29 - t  # the proxy orders the bottom 4 backwards
                        audit.append(
                            {
                                "run": run,
                                "iteration": it,
                                "prompt_id": 100,
                                "candidate": c,
                                "seed": c,
                                "proxy": "explore",
                                "proxy_precision": "nvfp4",
                                "proxy_steps": 6,
                                "proxy_reward": 1.0 - proxy_rank / 20,
                                "proxy_rank": proxy_rank,
                                "selected": proxy_rank <= 4 or proxy_rank > 12,
                                "reward": 1.0 - t / 20,
                            }
                        )
    S.write_tables(str(folder), pairs, audit, timings, {"runs_root": "synthetic", "host": {}, "runs": meta})
    return folder


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = synthetic(tmp_path_factory.mktemp("study"))
    return folder, S.analyse(str(folder), n_boot=2000, seed=0)


def row_at(rows, it):
    return next(r for r in rows if r["iteration"] == it)


def test_bootstrap_covers_a_known_effect_and_zero(result):
    folder, res = result
    # naive_quant − sol_rl: −0.006 per completed iteration, −0.054 after 9
    d = row_at(res["differences"]["train"]["naive_quant - sol_rl"], 8)
    assert d["ci95"][0] < -0.054 < d["ci95"][1] and d["ci95"][1] < 0 and d["resolved"]
    assert d["seeds"] == len(SEEDS) and d["prompts"] == SETS["train"][0] and d["pairs"] == 16
    # the same true curve, independent noise: the interval holds 0
    data, boot = S.Data(str(folder)), S.Bootstrap(2000, 0)
    z = row_at(S.paired_difference(data, boot, "diffusionnft", "naive_scaling", "held_out"), 8)
    assert z["ci95"][0] < 0 < z["ci95"][1] and not z["resolved"]
    # per-variant gain: 0.09 after 9 iterations, covered; strict accuracy carried along
    g = row_at(res["curves"]["train"]["sol_rl"], 8)
    assert g["ci95"][0] < 0.09 < g["ci95"][1] and "strict_gain" in g
    # these prompts held fixed: the prompt effect leaves the interval, which narrows
    fx = g["ci95_fixed_prompts"]
    assert fx[1] - fx[0] < g["ci95"][1] - g["ci95"][0] and fx[0] < g["mean"] < fx[1]
    # one run by itself: its interval from the pairs alone, around its own gain
    (last,) = res["per_run"]["sol_rl-seed0"]["train"][-1:]
    assert last["iteration"] == 8 and last["ci95"][0] < last["mean"] < last["ci95"][1]
    assert [r["iteration"] for r in res["per_run"]["naive_quant-seed3"]["held_out"]] == list(EVALS)
    # deterministic: the same seed gives the same replicates
    assert S.analyse(str(folder), n_boot=2000, seed=0)["differences"] == res["differences"]


def test_bootstrap_resamples_both_levels():
    boot = S.Bootstrap(3000, 1)
    spp = np.array([4, 4, 2])
    w = boot.pair_weights("x", spp)
    assert w.shape == (3000, 10) and np.allclose(w.sum(axis=1), 1.0)
    # prompt-level resampling: some replicates leave a whole prompt out
    per_prompt = np.stack([w[:, :4].sum(1), w[:, 4:8].sum(1), w[:, 8:].sum(1)], axis=1)
    assert (per_prompt == 0).any(axis=1).mean() > 0.5
    # seed-level: within a drawn prompt, its seeds are not all weighted alike
    assert (w[:, :4].std(axis=1) > 0).mean() > 0.5
    # prompts held fixed: every prompt carries its own share in every replicate, its seeds still drawn
    f = boot.pair_weights("x", spp, fixed_prompts=True)
    fixed_share = np.stack([f[:, :4].sum(1), f[:, 4:8].sum(1), f[:, 8:].sum(1)], axis=1)
    assert np.allclose(fixed_share, [0.4, 0.4, 0.2]) and (f[:, :4].std(axis=1) > 0).mean() > 0.5
    idx = boot.runs(5)
    assert idx.shape == (3000, 5) and idx.min() == 0 and idx.max() == 4
    assert np.array_equal(idx, S.Bootstrap(3000, 1).runs(5))


def test_equivalence_margin_is_the_larger_end_of_the_90_percent_interval(result):
    rows = [{"iteration": 3, "mean": 0.01, "ci90": [-0.01, 0.03], "b_gain": 0.1, "seeds": 5, "prompts": 8}]
    (e,) = S.equivalence(rows)
    assert e["margin"] == pytest.approx(0.03) and e["margin_share_of_reference_gain"] == pytest.approx(0.3)
    rows[0]["ci90"] = [-0.05, 0.02]
    assert S.equivalence(rows)[0]["margin"] == pytest.approx(0.05)
    rows[0]["b_gain"] = -0.01
    assert S.equivalence(rows)[0]["margin_share_of_reference_gain"] is None
    _, res = result  # identical rewards: margin 0
    assert row_at(res["equivalence"]["sol_rl - naive_scaling"]["train"], 8)["margin"] == 0.0


def test_parity_levels_come_from_the_smallest_resolved_final_gain():
    lv = S.parity_levels(
        {
            "a": {"mean": 0.10, "ci95": [0.05, 0.15]},
            "b": {"mean": 0.08, "ci95": [0.01, 0.12]},
            "c": {"mean": 0.02, "ci95": [-0.01, 0.05]},  # not resolved above 0: not compared
        }
    )
    assert lv["compared"] == ["a", "b"] and lv["base"] == 0.08
    assert lv["levels"] == pytest.approx([0.02, 0.04, 0.06])
    assert S.parity_levels({"c": {"mean": 0.02, "ci95": [-0.01, 0.05]}})["levels"] == []
    x = np.array([0.0, 1.0, 5.0])
    assert S.first_crossing(x, np.array([0.0, 0.1, 0.5]), 0.3) == pytest.approx(3.0)
    assert S.first_crossing(x, np.array([0.0, 0.1, 0.2]), 0.3) == np.inf
    reps = S.first_crossing(x, np.array([[0.0, 0.1, 0.5], [0.0, 0.4, 0.5]]), 0.2)
    assert reps == pytest.approx([2.0, 0.5])


def test_parity_speedup_is_the_cost_ratio_when_curves_coincide(result):
    _, res = result
    p = res["parity"]
    # the levels come from the modes expected to learn; naive_quant (slope 0.004) is timed against them
    assert p["compared"] == sorted(S.LEVEL_MODES) and p["base"] == pytest.approx(0.0857, abs=0.005)
    top = p["rows"][-1]["modes"]["naive_quant"]["iterations"]
    assert top["time"] == "inf" and top["replicates_never"] > 0.9
    assert set(p["rows"][0]["per_seed_iterations"]["sol_rl"]) == {str(k) for k in SEEDS}
    per_it = {v: SECONDS[v] + 1.0 for v in S.MODES}  # explore + update; eval is measurement; the stall is a median away
    for row in p["rows"]:
        cell = row["modes"]["sol_rl"]
        assert cell["wall_seconds"]["speedup"] == pytest.approx(per_it["naive_scaling"] / per_it["sol_rl"], rel=1e-5)
        assert cell["iterations"]["speedup"] == pytest.approx(1.0)
        for c in S.LOW_COSTS:
            assert cell[f"gpu_{c:g}"]["speedup"] == pytest.approx(2500.0 / (500.0 + c * 1000.0), rel=1e-5)
        lo, hi = cell["wall_seconds"]["speedup_ci95"]
        assert lo == pytest.approx(7.0 / 3.0, rel=1e-5) and hi == pytest.approx(
            7.0 / 3.0, rel=1e-5
        )  # paired replicates: the same crossing
    assert p["cost"]["naive_scaling"]["seconds_per_iteration_max"] == pytest.approx(107.0)


def test_winners_curse_from_the_audit_rows(result):
    _, res = result
    wc = res["winners_curse"]["sol_rl"]
    assert wc["n"] == 16 and wc["k"] == 8 and wc["chance_false_top"] == pytest.approx(0.75)
    # proxy ranks 1..4 are the true ranks: no rank error, no false top seed
    assert wc["rank_error_top"]["mean"] == 0.0 and wc["false_top"]["mean"] == 0.0
    # the bottom 4 reversed: ranks off by 3, 1, 1, 3 of 16, still all in the true bottom 4
    assert wc["rank_error_bottom"]["mean"] == pytest.approx(0.125) and wc["false_bottom"]["mean"] == 0.0
    assert 0.0 < wc["spearman"]["mean"] < 1.0
    assert wc["seeds"] == len(SEEDS) and wc["audited_iterations"] == ITERATIONS


def test_pool_size_and_training_pool(tmp_path):
    """N: paired by training seed; a training pool of 8 prompts has another `train` set (not compared
    there) and the same held-out pairs (compared unpaired)."""
    res = S.analyse(str(synthetic(tmp_path, extra=True)), n_boot=1000, seed=0)
    n = row_at(res["pool_size_n"]["train"]["N32 - N16"], 8)
    assert n["seeds"] == 3 and n["training_seeds"] == [0, 1, 2]
    assert n["ci95"][0] < 0.018 < n["ci95"][1]
    assert res["sets"]["train"]["sol_rl_pool8"] == {"prompts": 8, "pairs": 32}
    assert "sol_rl_pool8" in res["curves"]["train"]
    (p,) = res["training_pool"].values()
    last = row_at(p, 8)
    assert last["seeds"] == [3, 4] and last["prompts"] == SETS["held_out"][0]
    assert last["ci95"][0] < 0.018 < last["ci95"][1]
    assert res["parity"]["compared"] == sorted(S.LEVEL_MODES)  # the extra variants are not modes
    assert S.paired_difference(S.Data(str(tmp_path)), S.Bootstrap(100, 0), "sol_rl_pool8", "sol_rl", "train") == []
    assert "study_sizes.png" in [p.name for p in S.plot(res, tmp_path)]


def test_replot_writes_json_md_and_plots(tmp_path, result):
    folder, _ = result
    out = tmp_path / "out"
    assert S.main(["analyse", "--data", str(folder), "--out", str(out), "--bootstrap", "500"]) == 0
    for f in (
        "study.json",
        "study.md",
        "study_gain.png",
        "study_differences.png",
        "study_parity.png",
        "study_fidelity.png",
    ):
        assert (out / f).is_file(), f
    again = tmp_path / "again"  # the replot is deterministic: byte for byte
    assert S.main(["analyse", "--data", str(folder), "--out", str(again), "--bootstrap", "500", "--no-plots"]) == 0
    for f in ("study.json", "study.md"):
        assert filecmp.cmp(out / f, again / f, shallow=False), f
    text = (out / "study.md").read_text()
    assert "not resolved" in text and "c = 0.41" in text
    assert "* naive_quant - sol_rl, `train`, iteration 8: " in text and "sol_rl ahead." in text  # the verdicts


def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    assert S.main(["analyse", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pairs.parquet" in err and "export" in err and err.count("\n") == 1
    assert S.main(["export", "--runs-root", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, one_torch_thread):
    """Two real runs (sol_rl with its audit, naive_scaling), one iteration of a tiny config, through
    the pipeline's own steps (benchmarks/learning.py), evaluated after it."""
    import learning as L

    from solrl.config import load_config

    root = tmp_path_factory.mktemp("study_runs")
    base = load_config(str(REPO / "configs" / "shapes.yaml")).with_overrides(
        **{
            "prompts.pool": 2,
            "prompts.per_iteration": 2,
            "explore.n": 8,
            "select.k": 4,
            "rollout.steps": 3,
            "explore.steps": 2,
            "eval.every": 1,
            "eval.steps": 2,
            "eval.seeds_per_prompt": 2,
            "eval.held_out_prompts": 2,
            "nft.micro_batch": 8,
        }
    )
    spec = type(
        "Args",
        (),
        {
            "variant": ["sol_rl:run.mode=sol_rl", "naive_scaling:run.mode=naive_scaling,explore.precision=high"],
            "seeds": [0],
            "iterations": 1,
            "runs_root": str(root),
        },
    )
    runs = L.open_runs(spec, base, None)
    L.advance(runs, 1)
    return root, {k: r["run"] for k, r in runs.items()}


def test_export_of_real_runs(tiny_runs, tmp_path):
    import pyarrow.parquet as pq

    from storage.queries import paired_gains

    root, runs = tiny_runs
    out = tmp_path / "data"
    assert S.main(["export", "--runs-root", str(root), "--out", str(out)]) == 0
    pairs = pq.read_table(out / "pairs.parquet").to_pandas()
    # 2 runs × (baseline + iteration 0) × (2 train prompts + 2 held-out) × 2 eval seeds
    assert len(pairs) == 2 * 2 * 4 * 2 and set(pairs["iteration"]) == {-1, 0}
    assert pairs["strict"].notna().all() and str(pairs["reward"].dtype) == "float32"
    for name, run in runs.items():  # the exported pairs give the run's own paired gain
        mine = pairs[pairs["run"] == name]
        for s, g in paired_gains(run.store, 0).items():
            ev = mine[(mine["iteration"] == 0) & (mine["set"] == s)].reset_index()
            base = mine[(mine["iteration"] == -1) & (mine["set"] == s)].reset_index()
            assert (ev["prompt_id"] == base["prompt_id"]).all() and (ev["eval_seed"] == base["eval_seed"]).all()
            assert (ev["reward"] - base["reward"]).mean() == pytest.approx(g["gain"], abs=1e-6)
    t = pq.read_table(out / "timings.parquet").to_pandas()
    sol = t[(t["run"] == "sol_rl-seed0") & (t["iteration"] == 0)].set_index("stage")
    ns = t[(t["run"] == "naive_scaling-seed0") & (t["iteration"] == 0)].set_index("stage")
    assert {"explore", "select", "regenerate", "update", "audit", "eval"} <= set(sol.index)
    assert (sol["seconds"] > 0).all() and sol.loc["explore", "forwards_low"] == 2 * 8 * 2  # P · N · explore steps
    assert ns.loc["explore", "forwards_high"] == 2 * 8 * 3 and ns["forwards_low"].sum() == 0  # rollout steps
    audit = pq.read_table(out / "audit.parquet").to_pandas()
    assert len(audit) == 8 and set(audit["run"]) == {"sol_rl-seed0"}  # every explored seed of one prompt
    info = json.loads((out / "runs.json").read_text())
    assert info["runs"]["sol_rl-seed0"]["config_hash"] == runs["sol_rl-seed0"].hash
    assert info["host"]["cpu_model"]
    assert S.main(["analyse", "--data", str(out), "--bootstrap", "200", "--no-plots"]) == 0
    res = json.loads((out / "study.json").read_text())
    d = res["differences"]["train"]["sol_rl - naive_scaling"][0]
    assert d["seeds"] == 1 and d["prompts"] == 2 and res["baseline_identical_across_runs"] is True


def test_help():
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "study.py"), "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "export" in r.stdout and "analyse" in r.stdout


def test_committed_replot_reproduces_committed_outputs(tmp_path):
    """The committed study.json and study.md come from the committed Parquet alone, deterministically."""
    out = tmp_path / "replot"
    assert S.main(["analyse", "--data", str(COMMITTED), "--out", str(out), "--no-plots"]) == 0
    for f in ("study.json", "study.md"):
        assert filecmp.cmp(out / f, COMMITTED / f, shallow=False), (
            f"{f} differs from the committed one: re-run the replot"
        )


def test_the_readmes_make_run_lines_are_the_committed_pairs():
    """README.md shows a `make run` (benchmarks/results/make-run/, exported from that run): every
    evaluation figure its lines print is recomputed here from the committed pairs alone."""
    import re

    import pyarrow.parquet as pq

    pairs = pq.read_table(REPO / "benchmarks/results/make-run/pairs.parquet").to_pylist()
    base = {(r["set"], r["prompt_id"], r["eval_seed"]): r for r in pairs if r["iteration"] == -1}
    readme = (REPO / "README.md").read_text()
    lines = re.findall(r"^iteration (\d+) \|.*$", readme, flags=re.M)
    assert lines, "README.md shows no `make run` output"
    checked = 0
    for line in re.findall(r"^iteration \d+ \|.*$", readme, flags=re.M):
        it = int(line.split()[1])
        for name, gain, se, n, s0, s1 in re.findall(
            r"(train|held_out) ([+-]\d\.\d{4}) ± (\d\.\d{4}) \(n (\d+)\), strict (\d\.\d\d)→(\d\.\d\d)", line
        ):
            rows = [r for r in pairs if r["iteration"] == it and r["set"] == name]
            d = np.array([r["reward"] - base[(name, r["prompt_id"], r["eval_seed"])]["reward"] for r in rows])
            assert len(d) == int(n), (it, name)
            assert f"{d.mean():+.4f}" == gain and f"{d.std(ddof=1) / np.sqrt(len(d)):.4f}" == se, (it, name)
            strict_base = np.mean([base[(name, r["prompt_id"], r["eval_seed"])]["strict"] for r in rows])
            assert (f"{strict_base:.2f}", f"{np.mean([r['strict'] for r in rows]):.2f}") == (s0, s1), (it, name)
            checked += 1
    assert checked >= 6  # every evaluated iteration (0, 2, 4, 6), both sets


def test_a_study_in_pieces_merges_by_run_and_drops_another_presets_runs(tiny_runs, tmp_path):
    """export --merge: a second piece adds its runs and keeps the committed ones; a re-export of the
    same runs changes nothing; runs of another preset (an older design) are dropped, not mixed in;
    status lists what is left and the commands for it."""
    import shutil

    import yaml

    root, runs = tiny_runs
    preset = tmp_path / "preset.yaml"  # the tiny runs' own config: they are this design's runs
    cfg = runs["sol_rl-seed0"].cfg.with_overrides(**{"run.mode": "sol_rl"})
    preset.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    older = synthetic(tmp_path / "data")  # committed rows of another preset
    piece1, piece2 = tmp_path / "piece1", tmp_path / "piece2"
    shutil.copytree(root / "sol_rl-seed0", piece1 / "sol_rl-seed0")
    shutil.copytree(root / "naive_scaling-seed0", piece2 / "naive_scaling-seed0")
    common = ["--out", str(older), "--preset", str(preset)]
    unfinished = tmp_path / "unfinished"  # a run whose last update never committed
    shutil.copytree(root / "sol_rl-seed0", unfinished / "sol_rl-seed0")
    (unfinished / "sol_rl-seed0" / "iter=00000" / "update" / "_COMMITTED.json").unlink()
    assert S.main(["export", "--merge", "--runs-root", str(unfinished), *common]) == 0
    assert "sol_rl-seed0" not in json.loads((older / "runs.json").read_text())["runs"]
    assert S.main(["export", "--merge", "--runs-root", str(piece1), *common]) == 0
    info = json.loads((older / "runs.json").read_text())
    assert set(info["runs"]) == {"sol_rl-seed0"}  # the synthetic runs are not this design: dropped
    assert info["runs"]["sol_rl-seed0"]["design"] is True and "," in info["runs"]["sol_rl-seed0"]["host"]
    after1 = tmp_path / "after1"
    shutil.copytree(older, after1)
    assert S.main(["export", "--merge", "--runs-root", str(piece2), *common]) == 0
    merged = {f: (older / f).read_bytes() for f in ("pairs.parquet", "audit.parquet", "timings.parquet")}
    whole = tmp_path / "whole"  # the same runs exported at once: the same rows
    assert S.main(["export", "--runs-root", str(root), "--out", str(whole), "--preset", str(preset)]) == 0
    for f, b in merged.items():
        assert (whole / f).read_bytes() == b, f
    assert S.main(["export", "--merge", "--runs-root", str(piece2), *common]) == 0  # idempotent
    assert all((older / f).read_bytes() == b for f, b in merged.items())
    # a piece exported where its runs were and committed unanalysed, merged later: the same rows
    exported2 = tmp_path / "exported2"
    assert S.main(["export", "--runs-root", str(piece2), "--out", str(exported2), "--preset", str(preset)]) == 0
    assert S.main(["merge", str(exported2), "--out", str(after1), "--preset", str(preset)]) == 0
    assert all((after1 / f).read_bytes() == b for f, b in merged.items())
    assert set(json.loads((after1 / "runs.json").read_text())["runs"]) == {"sol_rl-seed0", "naive_scaling-seed0"}
    again = tmp_path / "again"  # two pieces holding the same run: the later one's rows, once
    shutil.copytree(exported2, again)
    assert S.main(["merge", str(exported2), str(again), "--out", str(after1), "--preset", str(preset)]) == 0
    assert all((after1 / f).read_bytes() == b for f, b in merged.items())
    assert S.main(["merge", str(piece2), "--out", str(after1), "--preset", str(preset)]) == 2  # a runs folder
    # a piece waiting under <data>/pending/: status counts its runs as run and prints the merge
    waiting = tmp_path / "waiting"
    assert S.main(["export", "--runs-root", str(piece1), "--out", str(waiting), "--preset", str(preset)]) == 0
    shutil.copytree(exported2, waiting / "pending" / "seed0b")
    text = S.status(str(waiting), "/x/runs", str(preset))
    assert "sol_rl          seed 0: done" in text and "naive_scaling   seed 0: pending" in text
    assert "not yet merged" in text and f"merge {waiting}/pending/seed0b --out {waiting}" in text
    seed0 = next(line for line in text.splitlines() if "--seeds 0 " in line)
    assert "naive_scaling:" not in seed0 and "sol_rl:" not in seed0 and "diffusionnft:" in seed0
    assert S.main(["merge", str(waiting / "pending" / "seed0b"), "--out", str(waiting), "--preset", str(preset)]) == 0
    assert all((waiting / f).read_bytes() == b for f, b in merged.items())
    text = S.status(str(older), "/x/runs", str(preset))
    assert "sol_rl          seed 0: done" in text and "naive_quant     seed 0: -" in text
    seed0 = next(line for line in text.splitlines() if "--seeds 0 " in line)
    assert "--variant diffusionnft:run.mode=diffusionnft --variant naive_quant:" in seed0 and "sol_rl:" not in seed0
    seed4 = next(line for line in text.splitlines() if "--seeds 4 " in line)  # every variant of the design
    assert "--seeds 4 --variant sol_rl:run.mode=sol_rl" in seed4 and "--variant sol_rl_N24:" in seed4


STUDY_BLOCK = re.compile(r"<!-- figures: study\.json -->(.*?)<!-- /figures -->", re.S)
INTERVAL = re.compile(r"([+−-]?\d+\.\d+)×? \[([+−-]?\d+\.\d+)×?, ([+−-]?\d+\.\d+)×?\]")


def study_intervals(node, out=None) -> list[tuple[float, float, float]]:
    """Every (estimate, 95 % low, 95 % high) in study.json."""
    out = [] if out is None else out
    if isinstance(node, dict):
        for est, ci in (("mean", "ci95"), ("speedup", "speedup_ci95"), ("difference", "ci95")):
            if isinstance(node.get(est), float) and isinstance(node.get(ci), list) and len(node[ci]) == 2:
                out.append((node[est], *node[ci]))
        for v in node.values():
            study_intervals(v, out)
    elif isinstance(node, list):
        for v in node:
            study_intervals(v, out)
    return out


def test_the_readmes_study_figures_are_the_replots():
    """Every interval quoted in the READMEs' study passages (between `<!-- figures: study.json -->`
    markers) is an estimate of the committed study.json, which the replot test above reproduces
    from the committed Parquet: the words cannot drift from the data."""
    known = study_intervals(json.loads((COMMITTED / "study.json").read_text()))
    files = ("README.md", "docs/benchmarks.md", "benchmarks/results/README.md", "benchmarks/results/study/README.md")
    quoted = 0
    for f in files:
        for block in STUDY_BLOCK.findall((REPO / f).read_text()):
            for m in INTERVAL.finditer(block):
                vals = [float(x.replace("−", "-")) for x in m.groups()]
                digits = [len(x.split(".")[1]) for x in m.groups()]
                hit = any(
                    all(round(k, d) == v for k, v, d in zip(triple, vals, digits, strict=True)) for triple in known
                )
                assert hit, f"{f}: '{m.group(0)}' is no estimate of benchmarks/results/study/study.json"
                quoted += 1
    assert quoted >= 6, "the READMEs quote no study figures between the markers"
