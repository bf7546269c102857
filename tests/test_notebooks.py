"""The notebooks and `sol-rl report` run against a small committed run: no errors, every figure."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from pipeline_helpers import REPO, TINY, cli

from solrl.config import RunConfig
from tasks import stages
from tasks.run import open_run

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbruns")
    data = {k: dict(v) for k, v in TINY.items()}
    data["run"]["iterations"] = 2
    data["eval"]["every"] = 1
    data["fidelity"] = {"audit_prompts": 1}
    run = open_run(str(root / "nb"), RunConfig.model_validate(data))
    for i in range(2):
        stages.run_steps(run, i)
    return root


def _execute(name: str, params: str) -> nbformat.NotebookNode:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "notebooks are committed without outputs"
    )
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = params
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def _outputs(nb):
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [
        o
        for o in outs
        if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr" and "Traceback" in o.text)
    ]
    images = [o for o in outs if "image/png" in o.get("data", {})]
    return errors, images


def test_seed_rankings_notebook(small_run):
    nb = _execute("seed_rankings.ipynb", f'RUN_URI = "{small_run / "nb"}"\nITERATION = 1')
    errors, images = _outputs(nb)
    assert errors == [] and len(images) == 2 + 2  # the scatter, the image grid, the previews of the 2 prompts
    text = str(nb.cells)
    assert "kept_spearman" in text and "proxy_reward" in text


def test_run_report_notebook(small_run):
    nb = _execute("run_report.ipynb", f'RUN_URI = "{small_run / "nb"}"')
    errors, images = _outputs(nb)
    assert errors == [] and len(images) == 5  # rewards, fidelity, stage times, losses, eval grid
    text = str(nb.cells)
    assert "gain" in text and "spearman" in text  # the paired-gain table and the audits


def test_report_command_writes_pngs_and_index(small_run, tmp_path):
    out = tmp_path / "report"
    p = cli("report", "nb", "--run-root", small_run, "--out", out)
    assert "wrote 9 figures" in p.stdout  # 5 run figures + 2 per iteration
    html = (out / "index.html").read_text()
    refs = re.findall(r'src="([^"]+)"', html)
    assert len(refs) == 9 and all((out / r).stat().st_size > 5000 for r in refs)
