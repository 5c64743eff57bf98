"""`chexvision kaggle push|status|output`: run a notebook headless on Kaggle's GPUs.

`push` builds the wheel dataset and the rendered kernel (as `--dry-run` shows them), uploads the
wheel, waits until Kaggle serves that exact version, pushes the kernel and, with --wait, follows
it to the end and downloads its output. `push_kernel.sh` is this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chexvision_lib.cli.arguments import one_line_errors

DEFAULT_INTERVAL = 60
KAGGLE_SESSION_LIMIT = 43200  # 12 h


def checkout_root() -> Path:
    """The source checkout this package runs from (push builds the wheel from it)."""
    return Path(__file__).resolve().parents[2]  # chexvision_lib/cli/kaggle.py -> the checkout


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def print_tree(folder: Path) -> None:
    print(f"{folder}/")
    for path in sorted(folder.rglob("*"))[:200]:
        if not path.name.startswith("."):
            depth = len(path.relative_to(folder).parts)
            print("  " * depth + path.name + ("/" if path.is_dir() else ""))


def run_push(args: argparse.Namespace) -> None:
    from chexvision_lib.publishing import kaggle_kernel, kaggle_push
    from chexvision_lib.publishing.kaggle_validate import validate_build

    repo = Path(args.repo).resolve()
    if args.validate:
        problems = validate_build(Path(args.validate))
        if problems:
            raise ValueError("validation failed:\n  - " + "\n  - ".join(problems))
        say(f"validated {args.validate}")
        return
    template = repo / "kernel-metadata.json"
    notebook = kaggle_kernel.resolve_notebook(args.notebook, repo / "notebooks")
    parameters = kaggle_kernel.parse_parameters(args.parameter)
    owner = kaggle_kernel.resolve_owner(args.owner, template, args.dry_run)
    # Credentials before the build: a missing token should not cost a wheel build first.
    api = None if args.dry_run else kaggle_push.kaggle_api()
    build = kaggle_kernel.build_kernel(
        notebook,
        owner,
        Path(args.out or repo / "build" / "kaggle"),
        parameters,
        template=template,
        repo=repo,
        wheel=Path(args.wheel) if args.wheel else None,
        internet=args.internet,
    )
    say(
        f"built {build.kernel_ref} with wheel {build.wheel.name} (sha256 {build.wheel_sha256[:12]})"
    )
    if args.dry_run:
        print_tree(build.out)
        say(f"dry run: nothing was uploaded; without --dry-run this pushes {build.kernel_ref}")
        return
    timing = {"interval": args.interval, "timeout": args.timeout, "say": say}
    kaggle_push.publish_wheel(api, build, **timing)
    kaggle_push.push_kernel(api, build, say)
    output = Path(args.output_dir or build.out / "output" / build.slug)
    if not args.wait:
        print(f"Follow it with: chexvision kaggle status {build.kernel_ref}")
        print(f"Fetch output:   chexvision kaggle output {build.kernel_ref} --out {output}")
        return
    try:
        kaggle_push.wait_for_kernel(api, build.kernel_ref, **timing)
    except kaggle_push.KaggleError as failure:
        if "ended with status" in str(failure):  # its log says why: fetch it, then fail
            kaggle_push.download_output(api, build.kernel_ref, output)
            raise kaggle_push.KaggleError(
                f"{failure}\nits output and log are in {output}"
            ) from None
        raise
    files = kaggle_push.download_output(api, build.kernel_ref, output)
    say(f"downloaded {len(files)} files to {output}")


def run_status(args: argparse.Namespace) -> None:
    from chexvision_lib.publishing import kaggle_push

    status, message = kaggle_push.kernel_status(kaggle_push.kaggle_api(), args.kernel)
    print(f"{args.kernel}: {status}" + (f" ({message})" if message else ""))
    if status in kaggle_push.FAILED:
        raise kaggle_push.KaggleError(f"kernel {args.kernel} ended with status {status}")


def run_output(args: argparse.Namespace) -> None:
    from chexvision_lib.publishing import kaggle_push

    files = kaggle_push.download_output(kaggle_push.kaggle_api(), args.kernel, Path(args.out))
    say(f"downloaded {len(files)} files to {args.out}")


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--notebook",
        default="01_train",
        help="a notebook in notebooks/ (01_train, 02_evaluate, 03_publish) or an .ipynb path",
    )
    p.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter, repeatable (typed as papermill types -p values)",
    )
    p.add_argument(
        "--owner", help="Kaggle username (default: kernel-metadata.json's, or $KAGGLE_USERNAME)"
    )
    p.add_argument("--out", help="build folder (default: REPO/build/kaggle)")
    p.add_argument("--wheel", help="reuse a prebuilt chexvision-*.whl instead of building one")
    p.add_argument(
        "--internet", action="store_true", help="enable internet (03_publish needs the Hub)"
    )
    p.add_argument("--dry-run", action="store_true", help="build and validate only: no network")
    p.add_argument(
        "--wait", action="store_true", help="follow the kernel to its end, then fetch its output"
    )
    p.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between status polls"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=KAGGLE_SESSION_LIMIT,
        help="give up waiting after this many seconds",
    )
    p.add_argument("--output-dir", help="where --wait puts the output (default: OUT/output/SLUG)")
    p.add_argument("--validate", metavar="DIR", help="only check an existing build folder")
    p.add_argument("--repo", default=str(checkout_root()), help="the checkout to build from")


def add_commands(commands: argparse._SubParsersAction) -> None:
    kaggle = commands.add_parser("kaggle", help="run a notebook headless on Kaggle (T4 x2)")
    actions = kaggle.add_subparsers(
        dest="kaggle_command", required=True, metavar="ACTION", help="push, status or output"
    )
    p = actions.add_parser("push", help="upload the wheel, push the kernel, optionally wait")
    add_push_arguments(p)
    p.set_defaults(func=run_push)
    p = actions.add_parser("status", help="a kernel's status; exit 2 when it failed")
    p.add_argument("kernel", metavar="OWNER/SLUG", help="the kernel")
    p.set_defaults(func=run_status)
    p = actions.add_parser("output", help="download a kernel's output files and log")
    p.add_argument("kernel", metavar="OWNER/SLUG", help="the kernel")
    p.add_argument("--out", required=True, help="folder for the files")
    p.set_defaults(func=run_output)
    for action in actions.choices.values():
        one_line_errors(action)
