"""The command line: --help everywhere, bad input as one clear sentence before any compute."""

import pytest
from pipeline_helpers import REPO, cli, hooks_env, write_config

COMMANDS = ["run", "status", "inspect", "verify", "report", "export-lora", "pretrain-shapes", "smoke"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    p = cli(*([command] if command else []), "--help")
    assert "Usage" in p.stdout
    if command:
        assert command in p.stdout


def _one_sentence_error(p, code=2):
    """The error is one line starting with "error:" (progress lines of a run may precede it), no traceback."""
    assert p.returncode == code, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == len(lines) - 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return lines[-1]


def test_bad_config_values(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", select={"k": 5})
    text = _one_sentence_error(cli("run", bad, "--run-root", tmp_path, check=False))
    assert "select.k" in text and "even" in text
    bad = write_config(tmp_path / "bad2.yaml", explore={"n": 2})
    text = _one_sentence_error(cli("run", bad, "--run-root", tmp_path, check=False))
    assert "explore.n (2) must be >= select.k (4)" in text
    bad = write_config(tmp_path / "bad3.yaml", reward={"weights": {"aesthetic": 1.0}})
    assert "unknown rewards ['aesthetic']" in _one_sentence_error(cli("run", bad, "--run-root", tmp_path, check=False))
    (tmp_path / "typo.yaml").write_text("explore: {nn: 3}\n")
    assert "explore.nn" in _one_sentence_error(cli("run", tmp_path / "typo.yaml", "--run-root", tmp_path, check=False))
    assert not list(tmp_path.glob("*/run.json"))  # nothing was created


def test_missing_things(tmp_path):
    assert "does not exist" in _one_sentence_error(cli("run", tmp_path / "nope.yaml", check=False))
    assert "no run at" in _one_sentence_error(cli("status", "ghost", "--run-root", tmp_path, check=False))
    text = _one_sentence_error(cli("run", "flux", "--run-root", tmp_path, check=False))
    assert "Transformer Engine" in text or "flux weights are missing" in text  # the explore backend is checked first
    import yaml

    emulated = tmp_path / "flux-emulated.yaml"
    data = yaml.safe_load((REPO / "configs" / "flux.yaml").read_text())
    data["explore"]["backend"] = "emulated"
    emulated.write_text(yaml.safe_dump(data))
    text = _one_sentence_error(cli("run", emulated, "--run-root", tmp_path, check=False))
    assert "flux weights are missing" in text and "model.weights" in text
    weights = write_config(tmp_path / "w.yaml", model={"weights": str(tmp_path / "nowhere")})
    assert "pretrain-shapes" in _one_sentence_error(cli("run", weights, "--run-root", tmp_path, check=False))


def test_unwritable_store_is_refused_before_compute(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path / "c.yaml")
    text = _one_sentence_error(
        cli("run", cfg, "--run-root", blocker / "runs", check=False), code=1
    )  # the environment, not the input
    assert "not reachable or not writable" in text and "--run-root" in text


def test_environment_failures_are_one_sentence_with_exit_code_1(tmp_path):
    import time

    cfg = write_config(tmp_path / "c.yaml", run={"iterations": 1})
    # an S3 endpoint nobody listens on: reported before any compute, in seconds
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "SOLRL_S3_ENDPOINT": "http://127.0.0.1:9",
        "AWS_REGION": "us-east-1",
    }
    t = time.time()
    text = _one_sentence_error(cli("run", cfg, "--run-root", "s3://nobucket/runs", check=False, env=env), code=1)
    assert "s3://nobucket/runs" in text and time.time() - t < 60
    # a full disk in the middle of a run: one sentence saying how to resume, exit 1
    text = _one_sentence_error(
        cli(
            "run",
            cfg,
            "--run-id",
            "full",
            "--run-root",
            tmp_path,
            "--no-prefect",
            check=False,
            env=hooks_env(faults="write@iter=00000/regenerate:1:enospc"),
        ),
        code=1,
    )
    assert "disk is full" in text and "--run-id full" in text
    assert (
        "OK 4 committed" in cli("verify", "full", "--run-root", tmp_path).stdout
    )  # nothing half-written: plan, baseline, explore, select
    cli("run", cfg, "--run-id", "full", "--run-root", tmp_path, "--no-prefect")  # the resume completes
    assert "OK" in cli("verify", "full", "--run-root", tmp_path).stdout
    # --debug shows the traceback instead
    p = cli("--debug", "run", cfg, "--run-root", "s3://nobucket/runs", check=False, env=env)
    assert p.returncode != 0 and "Traceback" in p.stderr


@pytest.mark.parametrize(
    "section,values,fragment",
    [
        ("rollout", {"steps": 0}, "rollout.steps"),
        ("explore", {"steps": 0}, "explore.steps"),
        ("select", {"k": 0}, "select.k"),
        ("run", {"mode": "grpo"}, "run.mode"),
        ("explore", {"precision": "int4"}, "explore.precision"),
        ("model", {"family": "dalle"}, "model.family"),
        ("rollout", {"solver": "heun"}, "rollout.solver"),
        ("explore", {"precision": "high"}, "mode sol_rl explores in low precision"),
    ],
)
def test_config_validation_names_the_key(tmp_path, section, values, fragment):
    from solrl.config import ConfigError, load_config

    path = write_config(tmp_path / "bad.yaml", **{section: values})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert fragment in str(e.value) and str(e.value).startswith(str(path))


def test_iteration_lines_reach_a_file_as_each_iteration_ends(tmp_path):
    """With stdout sent to a file (nohup, a scheduler's log), each iteration's summary is there as
    soon as that iteration ends, not when the run ends."""
    import subprocess
    import time

    from pipeline_helpers import REPO, SOL_RL

    cfg = write_config(tmp_path / "c.yaml", run={"iterations": 3}, eval={"every": 0})
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*SOL_RL, "run", str(cfg), "--run-id", "r", "--run-root", str(tmp_path)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            seen_while_running = False
            last_update = tmp_path / "r" / "iter=00002" / "update" / "_COMMITTED.json"
            while proc.poll() is None:
                if "iteration 0 | train reward" in log.read_text():
                    seen_while_running = not last_update.exists()  # the run is not over yet
                    break
                time.sleep(0.2)  # poll the log file
            assert proc.wait(timeout=600) == 0, log.read_text()
        finally:
            proc.kill()
    text = log.read_text()
    assert seen_while_running, text
    assert [ln.split(" |")[0] for ln in text.splitlines() if ln.startswith("iteration ")] == [
        "iteration 0",
        "iteration 1",
        "iteration 2",
    ]


def test_a_summary_line_with_a_single_evaluation_pair_has_no_standard_error():
    """eval.seeds_per_prompt 1 with one prompt: one pair, no SE; the line still prints."""
    from tasks.summary import format_summary

    line = format_summary(
        {
            "iteration": 0,
            "train_reward": 0.5,
            "eval": {"train": {"gain": 0.01, "se": None, "n": 1}},
            "seconds": {"explore": 1.0},
        }
    )
    assert line == "iteration 0 | train reward 0.5000 | train +0.0100 ± n/a (n 1) | stages explore 1.0s"
