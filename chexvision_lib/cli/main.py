"""`chexvision`: builds the parser from each command group and runs one command."""

from __future__ import annotations

import argparse
import sys

from chexvision_lib.cli import (
    data,
    evaluate,
    kaggle,
    leaderboard,
    predict,
    publish,
    score,
    serve,
    study,
    train,
)
from chexvision_lib.cli.arguments import one_line_errors
from chexvision_lib.cli.errors import debug_requested, is_user_error, report

COMMAND_GROUPS = (data, train, evaluate, score, leaderboard, predict, publish, kaggle, study, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chexvision",
        description="Chest X-ray classifiers on NIH ChestX-ray14. Research and teaching use only; "
        "not a medical device.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks (or CHEXVISION_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    one_line_errors(parser)
    for command in commands.choices.values():
        one_line_errors(command)
        command.add_argument(  # `chexvision CMD ... --debug` works too
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"chexvision {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug_requested(args.debug) or not is_user_error(error):
            raise
        return report(args.command, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
