"""One error path: a user's mistake leaves `chexvision` as one line that names the file, row or flag
(exit status 2); `--debug` or CHEXVISION_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import os
import pickle
import sys

DEBUG_ENV = "CHEXVISION_DEBUG"
USER_ERROR_STATUS = 2


def is_user_error(error: BaseException) -> bool:
    """Bad input rather than a bug: a wrong value or type, a missing or unreadable file, a refused
    unpickle, a missing token, and the Hub's HTTP and offline errors (all OSError subclasses)."""
    from chexvision_lib.core.hub_access import MissingTokenError

    return isinstance(
        error, ValueError | TypeError | OSError | pickle.UnpicklingError | MissingTokenError
    )


def debug_requested(flag: bool) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(command: str, error: BaseException) -> str:
    """`chexvision CMD: error: MESSAGE`, the message folded onto as few lines as it allows."""
    message = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):
        message = f"missing key {message}"
    return f"chexvision {command}: error: {message}"


def report(command: str, error: BaseException) -> int:
    print(one_line(command, error), file=sys.stderr)
    print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
    return USER_ERROR_STATUS
