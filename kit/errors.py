"""Errors that end a run with one clear line and a non-zero exit code.

Anything the user can fix (a flag, a file, the network, memory) is raised as a `UserError`;
`kit.train.main` prints its message on one line and exits with its code. Saved state
(checkpoints, metrics) is never touched on the way out.
"""


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
