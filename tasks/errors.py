"""Every failure a user can cause or meet, as one sentence and an exit code.

    2  bad input: a config error, a config that does not match the run, a missing model or
       prompt file, a run held by another process, a damaged run.json
    1  the environment: the store is unreachable, no credentials, the disk is full, permission
       denied, a connection error
Anything else is a bug and keeps its traceback. `--debug` (SOLRL_DEBUG=1) shows tracebacks always.
"""

from __future__ import annotations

import errno


def _names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def explain(e: BaseException, resume: str = "") -> tuple[int, str] | None:
    """(exit code, one sentence) for a known failure, None for a bug."""
    from solrl.errors import ConfigError, MissingInput

    if isinstance(e, (ConfigError, MissingInput)):  # torch-free: a config error reads in about a second
        return 2, str(e)
    from solrl.rewards import RewardUnavailable
    from storage.lease import LeaseHeld, LeaseLost
    from storage.selection import ShortPromptError
    from storage.store import StoreError, describe

    from .run import ConfigMismatch, RunDamaged

    again = f"; then resume with `{resume}`" if resume else ""
    if isinstance(
        e, (ConfigError, MissingInput, ConfigMismatch, LeaseHeld, RunDamaged, RewardUnavailable, ShortPromptError)
    ):
        return 2, str(e)
    if "UpdateRankFailed" in _names(e):  # tasks/ddp.py: a rank of the distributed update failed or died
        return 1, str(e)
    if isinstance(e, LeaseLost):
        return 1, str(e)
    if isinstance(e, StoreError):
        return 1, str(e)
    names = _names(e)
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return (
            1,
            f"no S3 credentials were found ({describe(e)}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile{again}",
        )
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ReadTimeoutError",
    } or isinstance(e, (ConnectionError, TimeoutError)):
        return 1, f"the run store is unreachable ({describe(e)}): check the endpoint and the network{again}"
    if "distributed" in type(e).__module__ or "Timed out trying to connect" in str(e):
        return (
            1,
            f"the Dask scheduler is unreachable ({describe(e)}): check cluster.address / --cluster and that its workers run",
        )
    if isinstance(e, FileNotFoundError):
        return (
            1,
            f"a file of the run store is missing ({describe(e)}): run `sol-rl verify` to see what is damaged{again}",
        )
    if isinstance(e, OSError) and (e.errno is not None or names & {"ClientError", "BotoCoreError"}):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        if e.errno == errno.ENOSPC:
            return 1, f"the disk is full{where}: free some space{again}"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(e, PermissionError):
            return 1, f"permission denied writing the run store{where}: make it writable{again}"
        return 1, f"a storage error stopped the run ({describe(e)}){again}"
    return None
