"""`chexvision card` and `chexvision push`: a model folder with its card, and its upload."""

from __future__ import annotations

import argparse


def run_card(args: argparse.Namespace) -> None:
    from chexvision_lib.publishing.model_folder import build_model_folder

    folder = build_model_folder(
        args.run, args.out, split=args.split, figures=not args.no_figures, repo_id=args.repo_id
    )
    print(f"model card: {folder / 'README.md'}")


def run_push(args: argparse.Namespace) -> None:
    from chexvision_lib.publishing.hub import push_model_folder

    # Errors (no token, HTTP, offline) leave through the CLI's one error path; none carries the
    # token.
    push_model_folder(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("card", help="build a model folder (weights, metrics, model card)")
    p.add_argument("run", metavar="RUN_DIR", help="run folder with an evaluated split")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to report")
    p.add_argument("--repo-id", help="owner/name for the card's loading example")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run_card)

    p = commands.add_parser("push", help="upload a model folder to the Hugging Face Hub")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `chexvision card`")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to commit to (created when absent)")
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded; no token, no network"
    )
    p.set_defaults(func=run_push)
