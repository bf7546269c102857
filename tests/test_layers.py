"""The layering of docs/design.md, enforced with import-linter (contracts in pyproject.toml):
flows -> tasks -> storage -> solrl, Prefect only in flows/ and tasks/, torch never in storage/, no
import cycles between the modules of a package (lazy imports count)."""

import subprocess
import sys
from pathlib import Path

from pipeline_helpers import REPO


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "4 kept, 0 broken" in p.stdout


def test_config_validation_imports_no_torch():
    """A bad config is reported before torch (seconds of import) is loaded."""
    code = "import sys; from solrl.config import load_config; load_config('shapes'); print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stdout + p.stderr
