"""The one error type for people's mistakes: a bad flag, file, image or run folder.

`UserError` is what the command line reports as one line (`error: ...`) and the REST API as a
4xx answer; anything else is a bug, and keeps its traceback. The errors of each stage (ImageError,
DataError, CheckpointError, DistributedError, TooBig, ...) subclass it.

    python -c "from mnist_cnn.errors import UserError; print(UserError.__subclasses__())"
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix, phrased for a person; no traceback is needed to fix it."""


class ConfigError(UserError, ValueError):
    """A training config, recipe name or option that cannot be used."""


class InputError(UserError, ValueError):
    """An input to a function (an array, a value) that is refused rather than misread."""
