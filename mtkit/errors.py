"""The errors mtkit raises for users.

Every problem a user can cause (a bad config, a missing file, a broken checkpoint) is an
MtkitError whose message says what is wrong, where (file, line, key) and how to fix it. The
CLI prints it as one `error: ...` line and exits non-zero; `--debug` shows the traceback.
`assert` is kept for internal invariants only.
"""


class MtkitError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(MtkitError):
    """A config file or `--set` override is invalid (exit code 2, like a usage error)."""

    exit_code = 2


class DataError(MtkitError):
    """A corpus file or dataset cannot be read or is unusable."""


class CheckpointError(MtkitError):
    """A checkpoint is missing, truncated, foreign, or from a newer mtkit."""


class OutputError(MtkitError):
    """mtkit cannot write where it was told to: a folder it cannot create, no permission, read-only."""


class TrainingError(MtkitError):
    """Training cannot go on (NaN loss, repeated out-of-memory, a refused resume)."""
