import os
import tempfile

# Quiet, deterministic CPU runs for every test process (subprocesses inherit these).
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A private Prefect home (SQLite DB, settings) per test session, and room for a cold start.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="solrl-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# torch.compile of the NVFP4 activation kernel costs ~30 s per process; tests run the eager
# kernel (bit-identical, checked in test_quant) except where they test the compiled one.
os.environ.setdefault("SOLRL_NO_COMPILE", "1")

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def shapes_policy_factory():
    """Fresh shapes policies from the shipped weights (each call reloads: tests mutate adapters).
    Takes a RunConfig (default: the default config in float32, where exact comparisons hold)."""
    from solrl.config import RunConfig
    from solrl.models import load_policy

    return lambda cfg=None: load_policy(cfg or RunConfig().with_overrides(**{"model.dtype": "float32"}))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: torch threads only add synchronisation (many-fold slower when the cores are
    shared), and a forked child must not wait on the parent's OpenMP pool. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
