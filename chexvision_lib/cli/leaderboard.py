"""`chexvision leaderboard`: several models scored on the images they all share."""

from __future__ import annotations

import argparse
import sys

from chexvision_lib.cli.arguments import at_least_one
from chexvision_lib.core.disclaimer import DISCLAIMER

RUN_SPLITS = ("test", "val")  # as evaluation.leaderboard.RUN_SPLITS (not imported: it is heavy)


def names_list(text: str) -> list[str]:
    """An argparse type: comma-separated entry names."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def run_leaderboard(args: argparse.Namespace) -> None:
    from chexvision_lib.evaluation.leaderboard import (
        build_leaderboard,
        to_markdown,
        write_leaderboard,
    )

    board = build_leaderboard(
        args.entries,
        names=args.names,
        metadata=args.metadata,
        split=args.split,
        split_lists=args.split_list,
        google=args.google,
        n_resamples=args.resamples,
        per_finding=args.per_finding,
        skip_unknown=args.skip_unknown,
    )
    if board.warning:
        print(f"chexvision leaderboard: {board.warning}", file=sys.stderr)
    print(to_markdown(board).removesuffix(DISCLAIMER + "\n").rstrip())
    print()
    if args.out:
        written = write_leaderboard(board, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}")
    else:
        print(
            "(pass --out DIR to write leaderboard.csv, leaderboard.md and leaderboard_delong.csv)"
        )
    print(DISCLAIMER)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "leaderboard",
        help="score several models on the images they all share, with DeLong tests",
        description="Score every entry (a run folder, a CheXVision predictions.csv, or any "
        "tool's predictions CSV with --metadata) on the images all entries share: macro and "
        "binary AUC with patient-bootstrap 95%% CIs, Brier and ECE of Abnormal, AUCs against "
        "Google's expert labels (--google), and DeLong's test against the first entry (binary "
        "AUC difference; per finding, Holm-adjusted). Entries that disagree on an image's labels "
        "are refused. Prints a Markdown table; --out writes it with a CSV.",
    )
    p.add_argument(
        "entries",
        nargs="+",
        help="run folders (RUN/SPLIT/predictions.csv), predictions.csv files in CheXVision's "
        "schema, or any tool's predictions CSV (needs --metadata); the first is the reference "
        "of the DeLong tests",
    )
    p.add_argument(
        "--names",
        type=names_list,
        help="comma-separated entry names, one per entry (default: folder name or file stem)",
    )
    p.add_argument(
        "--metadata",
        help="Data_Entry_2017*.csv(.gz): labels and patients of foreign-format entries, and the "
        "split lists beside it",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=RUN_SPLITS,
        help="the split of run folders to read (RUN/SPLIT/predictions.csv)",
    )
    p.add_argument(
        "--split-list",
        action="append",
        help="train_val_list.txt / test_list.txt to check which split the shared images come "
        "from (repeatable; default: those beside --metadata)",
    )
    p.add_argument("--google", help="google2019_nih-chest-xray-labels.csv(.gz): expert labels")
    p.add_argument(
        "--resamples",
        type=at_least_one("patient bootstrap resamples"),
        default=2000,
        help="patient bootstrap resamples",
    )
    p.add_argument(
        "--per-finding",
        action="store_true",
        help="also show each finding's AUC and Holm-adjusted DeLong p-value",
    )
    p.add_argument(
        "--skip-unknown",
        action="store_true",
        help="count and skip images of foreign-format entries absent from the metadata "
        "(default: an error)",
    )
    p.add_argument(
        "--out", help="folder for leaderboard.csv, leaderboard.md, leaderboard_delong.csv"
    )
    p.set_defaults(func=run_leaderboard)
