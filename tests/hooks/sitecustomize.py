"""Test hooks for subprocesses the tests start (the CLI, Prefect workers, Dask workers).

Python imports `sitecustomize` at start-up from sys.path; the tests put this folder on the
PYTHONPATH of a subprocess (pipeline_helpers.hooks_env) together with one of:

    SOLRL_TEST_FAULTS=<spec>                 storage.faults.install(spec): a storage fault
    SOLRL_TEST_PAUSE_AFTER_WRITE_S=<s>       storage.faults.pause_after_writes: a window to kill in
    SOLRL_TEST_PAUSE_AFTER_WRITE_MATCH=<t>   ... only after data files whose path contains <t>

The product never reads these: it only offers storage.store.add_filesystem_wrapper.
"""

import os

_faults = os.environ.get("SOLRL_TEST_FAULTS")
_pause = float(os.environ.get("SOLRL_TEST_PAUSE_AFTER_WRITE_S") or 0)
if _faults or _pause:
    from storage import faults

    if _faults:
        faults.install(_faults)
    if _pause:
        faults.pause_after_writes(_pause, os.environ.get("SOLRL_TEST_PAUSE_AFTER_WRITE_MATCH", ""))
