"""Errors that end a run with one clear line and a non-zero exit code.

Anything the user can fix (a flag, a file, the network, memory) is raised as a `UserError`;
`kit.loop.train.main` prints its message on one line and exits with its code. Saved state
(checkpoints, metrics) is never touched on the way out.
"""


import sys


def run_cli(action) -> int:
    """For the data/ command-line tools: run action() and print the line it returns (exit 0), or
    the UserError it raises as one 'error: ...' line (exit with its code)."""
    try:
        print(action())
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 2


class DataError(UserError):
    """A shard is missing, corrupt, too short, or cannot be downloaded."""

    exit_code = 3


class TrainingDiverged(UserError):
    """The loss became NaN or inf."""

    exit_code = 4


class OutOfMemory(UserError):
    """CUDA ran out of memory; the message names a smaller micro-batch."""

    exit_code = 5


class Interrupted(UserError):
    """SIGINT or SIGTERM: the run saved a checkpoint (first signal) or stopped at once (second)."""

    exit_code = 130
