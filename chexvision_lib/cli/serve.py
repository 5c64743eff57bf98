"""`chexvision app` and `chexvision space`: a web page that scores one radiograph."""

from __future__ import annotations

import argparse

from chexvision_lib import __version__
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.serving.settings import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TITLE


def run_app(args: argparse.Namespace) -> None:
    from chexvision_lib.serving.app import launch

    print(DISCLAIMER)
    try:
        launch(args.model, args.revision, args.host, args.port)
    except ImportError as error:  # Gradio is optional
        raise ValueError(str(error)) from None
    except OSError as error:  # Gradio's "Cannot find empty port"
        raise ValueError(
            f"cannot serve on {args.host}:{args.port} ({error}); choose another --port"
        ) from None


def run_space(args: argparse.Namespace) -> None:
    from chexvision_lib.serving.space import SPACE_FILES, write_space_folder

    out = write_space_folder(
        args.model_dir,
        args.out,
        repo_id=args.repo_id,
        revision=args.revision,
        package=args.package,
        title=args.title,
    )
    print(f"Space folder written: {out} ({', '.join(SPACE_FILES)})")
    if args.package is None:
        print(
            "requirements.txt: the chexvision line is a placeholder; set it (--package or by "
            "hand) before pushing the Space"
        )


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("app", help="serve a web page that scores one radiograph (Gradio)")
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("--revision", help="Hub revision (commit hash) when MODEL is a repo id")
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: this machine only)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.set_defaults(func=run_app)

    p = commands.add_parser(
        "space", help="write a Hugging Face Space folder serving a published model"
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the local model folder that was pushed")
    p.add_argument("out", metavar="OUT", help="new (or empty) folder for the Space's files")
    p.add_argument("--repo-id", required=True, help="the model's owner/name on the Hub")
    p.add_argument(
        "--revision",
        required=True,
        help="commit hash of the model repo to serve (branches and tags are refused)",
    )
    p.add_argument(
        "--package",
        help=f"pinned chexvision requirement, e.g. chexvision=={__version__} or a wheel URL "
        "(default: a placeholder in requirements.txt)",
    )
    p.add_argument("--title", default=DEFAULT_TITLE, help="the Space's title")
    p.set_defaults(func=run_space)
