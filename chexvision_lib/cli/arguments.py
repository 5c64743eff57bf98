"""What every command's parser shares: argument types that say what they accept, and argument
errors reported like every other user error (one line naming the flag, exit status 2)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


def at_least_one(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 1, or a message saying so (argparse names the flag)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number >= 1 ({what}), got {text!r}")
        return value

    return whole_number


def prevalence(text: str) -> float:
    """An argparse type: a prevalence strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Argument errors as one line naming the flag, exit status 2 (argparse would print the usage
    first), with a pointer to --help."""

    def error(message: str) -> NoReturn:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        print(f"(see {parser.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
