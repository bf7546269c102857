import os

# Quiet, deterministic CPU runs for every test process.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def shapes_policy_factory():
    """Fresh shapes policies from the shipped weights (each call reloads: tests mutate adapters)."""
    from solrl.models import load_policy

    return lambda **kw: load_policy("shapes", **kw)
