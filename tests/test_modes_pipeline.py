"""Every mode through the artifact store (steps without Prefect): what each commits."""

import pytest
from pipeline_helpers import TINY

from solrl.config import RunConfig
from storage.queries import read_stage
from tasks import stages
from tasks.run import open_run


@pytest.mark.parametrize("mode", ["diffusionnft", "naive_scaling", "naive_quant"])
def test_mode_commits(tmp_path, mode):
    data = {k: dict(v) for k, v in TINY.items()}
    data["run"].update(mode=mode, iterations=1)
    data["eval"]["every"] = 0
    if mode == "naive_scaling":
        data["explore"]["precision"] = "high"
    cfg = RunConfig.model_validate(data)
    run = open_run(str(tmp_path / mode), cfg)
    summary = stages.run_steps(run, 0)
    regen = read_stage(run.store, 0, "regenerate", "seed, precision, steps, reward, x0").to_pydict()
    assert len(regen["seed"]) == 2 * 4 and all(regen["x0"])
    if mode == "diffusionnft":
        assert run.stage(0, "explore").record is None
        assert set(regen["precision"]) == {"high"} and set(regen["steps"]) == {5}
    else:
        explore = read_stage(run.store, 0, "explore", "seed, reward, steps, x0").to_pydict()
        assert set(explore["steps"]) == {5}  # naive modes explore at the rollout step count
        by_seed = dict(zip(explore["seed"], explore["reward"]))
        assert regen["reward"] == [by_seed[s] for s in regen["seed"]]  # trained on the explore samples
        assert set(regen["precision"]) == ({"high"} if mode == "naive_scaling" else {"nvfp4"})
    assert summary["loss"] == summary["loss"]  # finite, not NaN
    assert stages.is_done(run, run.stage(0, "update"))
