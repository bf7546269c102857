"""The errors a user's input causes, as one sentence each (what is wrong, where, how to fix).

Torch-free. tasks/errors.py maps them to exit code 2 (bad input); anything else a run meets is
either the environment (exit 1) or a bug (a traceback).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work: which key, what is wrong, how to fix it."""


class MissingInput(FileNotFoundError):
    """Something the user must provide is not there: weights, a prompt file, a run, a stage."""
