"""`chexvision study`, `cross-dataset`, `external` and `demo`: experiments built from the whole
pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexvision_lib.cli.data import SOURCE_KINDS


def run_study(args: argparse.Namespace) -> None:
    from chexvision_lib.studies.study import load_study_config, run_study

    summary_path = Path(load_study_config(args.config).out) / "summary.md"
    run_study(args.config, show_progress=not args.quiet)
    if args.quiet:
        print(summary_path.read_text())


def run_cross_dataset(args: argparse.Namespace) -> None:
    from chexvision_lib.studies.cross_dataset import load_cross_dataset_config, run_cross_dataset

    config = load_cross_dataset_config(args.config)
    run_cross_dataset(config, show_progress=not args.quiet)
    if args.quiet:
        print((Path(config.out) / "matrix.md").read_text())


def reader_option(text: str) -> tuple[str, str]:
    """An argparse type: NAME=VALUE (a reader option of prepare, e.g. target=lung-opacity)."""
    name, equals, value = text.partition("=")
    if not equals or not name or not value:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE (e.g. target=abnormal), got {text!r}"
        )
    return name, value


def run_external(args: argparse.Namespace) -> None:
    from chexvision_lib.studies.study import external_validation

    options = dict(args.option or [])
    if len(options) < len(args.option or []):
        raise ValueError("--option: an option is given twice")
    external_validation(
        args.run,
        args.external_root,
        args.out,
        size=args.size,
        fine_tune_epochs=args.fine_tune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        train={"threads": args.threads} if args.threads else None,
        kind=args.kind,
        options=options,
        seed=args.seed,
        n_resamples=args.resamples,
        device=args.device,
        show_progress=not args.quiet,
    )
    if args.quiet:
        print((Path(args.out) / "summary.md").read_text())


def run_demo(args: argparse.Namespace) -> None:
    from chexvision_lib.studies.demo import run_demo

    run_demo(args.out, quick=args.quick)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "study", help="a grid of k-fold cross-validated cells -> fold ensembles -> summary table"
    )
    p.add_argument("config", help="study JSON file (see studies/*.json)")
    p.add_argument("--quiet", action="store_true", help="no progress; print only the summary")
    p.set_defaults(func=run_study)

    p = commands.add_parser(
        "cross-dataset",
        help="train on each dataset, score on every dataset's test split -> AUC matrix",
    )
    p.add_argument("config", help="cross-dataset study JSON file (see studies/*.json)")
    p.add_argument("--quiet", action="store_true", help="no progress; print only matrix.md")
    p.set_defaults(func=run_cross_dataset)

    p = commands.add_parser(
        "external", help="score a model on another dataset before and after fine-tuning there"
    )
    p.add_argument("run", metavar="RUN_OR_CELL", help="run folder or study cell folder")
    p.add_argument(
        "external_root",
        help="any dataset prepare reads: a public dataset's folder, class folders (NORMAL/, "
        "...) or a path,label CSV",
    )
    p.add_argument(
        "--kind",
        choices=["auto", "nih", *SOURCE_KINDS, "binary"],
        default="auto",
        help="the external dataset's layout (auto: detected from its file names)",
    )
    p.add_argument(
        "--option",
        action="append",
        type=reader_option,
        metavar="NAME=VALUE",
        help="a reader option of the external dataset, e.g. target=lung-opacity (rsna), "
        "uncertainty=ones (chexpert); repeat for several",
    )
    p.add_argument("--out", required=True, help="folder for the results")
    p.add_argument("--fine-tune-epochs", type=int, default=5, help="epochs of fine-tuning")
    p.add_argument("--size", type=int, help="image size (default: the model's)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0, help="seed of the external split and training")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resamples", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--quiet", action="store_true", help="no progress; print only the summary")
    p.set_defaults(func=run_external)

    p = commands.add_parser("demo", help="synthetic data -> cache -> train -> evaluate")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's data and run")
    p.add_argument("--quick", action="store_true", help="a few seconds of training (CI)")
    p.set_defaults(func=run_demo)
