"""Errors about what a user gave: a config value, a folder, an image, a checkpoint.

Each message says what is wrong and what to do next. They derive from Hydra's
``CompactHydraException``, so the commands print the message alone, as Hydra does for its own
configuration errors (``HYDRA_FULL_ERROR=1`` shows the traceback); as Python exceptions they
stay what they always were (``ValueError``, ``FileNotFoundError`` ...), for callers that catch
those.
"""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """An error in the user's input, whose message names the input and the way forward."""


class InputValueError(UserError, ValueError):
    """A value that cannot work: a config key, an argument, a file's contents."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder that is not there, or not where it should be."""


class InputExistsError(UserError, FileExistsError):
    """A file or folder already there, in the way of what the command would write."""
