"""The `chexvision` command: synth, prepare, train, evaluate, report, compare, labels, predict,
demo, card, push, study, external, app, space.

Each subcommand is a thin shell over one library function; `chexvision <cmd> --help` lists options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from chexvision_lib.evaluate import DISCLAIMER


def _train_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, typed from the dataclass (one source of truth)."""
    from chexvision_lib.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
            )
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag, dest=field.name, choices=args, default=argparse.SUPPRESS)
        else:
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            parser.add_argument(
                flag,
                dest=field.name,
                type=base,
                # --cache and --out are checked in cmd_train: --resume needs neither
                default=argparse.SUPPRESS,
            )


def cmd_synth(args: argparse.Namespace) -> None:
    from chexvision_lib.synthetic import write_synthetic_nih

    summary = write_synthetic_nih(
        args.out, n_patients=args.patients, image_size=args.size, seed=args.seed
    )
    print(json.dumps(summary, indent=2, default=str))


def cmd_prepare(args: argparse.Namespace) -> None:
    from chexvision_lib.prepare import prepare

    folder = prepare(
        args.root,
        args.out,
        size=args.size,
        kind=args.kind,
        metadata_root=args.metadata_root,
        val_fraction=args.val_fraction,
        seed=args.seed,
        views=tuple(args.views.split(",")) if args.views else None,
        skip_bad=args.skip_bad,
        clahe=args.clahe,
        workers=args.workers,
    )
    info = json.loads((folder / "cache.json").read_text())
    print(f"cache ready: {folder} ({info['n']} images at {args.size}px, {info['n_failed']} failed)")


def cmd_train(args: argparse.Namespace) -> None:
    from chexvision_lib.config import from_dict
    from chexvision_lib.train import TrainConfig, fit, load_checkpoint

    values = {
        k: v for k, v in vars(args).items() if k not in ("func", "command", "resume", "config")
    }
    if args.resume:
        saved = load_checkpoint(Path(args.resume) / "checkpoints" / "last.pt")["config"]
        extra = {k: v for k, v in values.items() if saved.get(k) != v}
        if extra:
            raise SystemExit(
                f"--resume continues the run with its own config; drop {sorted(extra)}"
            )
        config = from_dict(TrainConfig, saved)
    else:
        if args.config:
            values = {**json.loads(Path(args.config).read_text()), **values}
        for required in ("cache", "out"):
            if required not in values:
                raise SystemExit(f"train: --{required} is required (or --resume RUN_DIR)")
        config = from_dict(TrainConfig, values)
    run = fit(config, resume=bool(args.resume))
    print(f"run folder: {run}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from chexvision_lib.evaluate import evaluate_run, summary_line

    metrics = evaluate_run(
        args.run, args.split, cache=args.cache, device=args.device, n_resamples=args.resamples
    )
    print(summary_line(metrics))
    print(f"wrote {Path(metrics['folder']) / 'metrics.json'} and predictions.csv")
    print(DISCLAIMER)


def cmd_predict(args: argparse.Namespace) -> None:
    from chexvision_lib.cache import available_cores
    from chexvision_lib.predict import predict_images
    from chexvision_lib.train import load_model, resolve_device

    model = load_model(args.model, resolve_device(args.device), revision=args.revision)
    workers = args.workers or min(8, available_cores())
    frame = predict_images(
        model, args.images, batch_size=args.batch_size, workers=workers, amp=args.amp
    )
    if args.out:
        frame.to_csv(args.out, index=False)
        print(f"wrote {len(frame)} rows to {args.out}")
        print(DISCLAIMER)
    elif args.json:
        print(frame.to_json(orient="records", indent=2))
    else:
        with_columns = frame.set_index("image").T
        print(with_columns.to_string(float_format=lambda v: f"{v:.4f}"))
        print(DISCLAIMER)


def cmd_report(args: argparse.Namespace) -> None:
    from chexvision_lib import report

    report.write_figures(args.run, args.split)
    for output in args.cam_outputs.split(","):
        report.gradcam_grid(args.run, args.split, output=output)
    print(f"figures in {Path(args.run) / args.split / 'figures'}")
    if args.bbox or report.find_bbox_list(args.run):
        table = report.localisation_report(args.run, args.split, bbox_csv=args.bbox)
        overall = table[table["finding"] == "all"].set_index("method")
        print(overall.to_string(float_format=lambda v: f"{v:.3f}"))


def cmd_compare(args: argparse.Namespace) -> None:
    from chexvision_lib.compare import compare_runs, format_comparison

    table = compare_runs(args.run_a, args.run_b, args.split)
    print(format_comparison(table, "A", "B"))
    if args.out:
        table.to_csv(args.out, index=False)


def cmd_labels(args: argparse.Namespace) -> None:
    from chexvision_lib import label_sets
    from chexvision_lib.compare import predictions_path
    from chexvision_lib.evaluate import read_predictions

    predictions = read_predictions(predictions_path(args.run, args.split))
    if args.google:
        table = label_sets.score_against_google(
            predictions, label_sets.read_google_labels(args.google), n_resamples=args.resamples
        )
    else:
        table = label_sets.score_against_binary(
            predictions, label_sets.read_binary_labels(args.binary), n_resamples=args.resamples
        )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(DISCLAIMER)


def cmd_demo(args: argparse.Namespace) -> None:
    from chexvision_lib.demo import run_demo

    run_demo(args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chexvision",
        description="Chest X-ray classifiers on NIH ChestX-ray14. Research and teaching use only.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("synth", help="write the built-in synthetic NIH-layout dataset")
    p.add_argument("out")
    p.add_argument("--patients", type=int, default=240)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = commands.add_parser("prepare", help="index a dataset and decode it once into a cache")
    p.add_argument("root", help="NIH copy, parquet folder, class folders or path,label CSV")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--kind", choices=["auto", "nih", "hub", "binary"], default="auto")
    p.add_argument("--metadata-root", help="for --kind hub: folder with Data_Entry CSV + lists")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", help="comma-separated view positions to keep, e.g. PA or PA,AP")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count) missing/unreadable images instead of stopping",
    )
    p.add_argument("--clahe", action="store_true", help="apply CLAHE once, at cache time")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_prepare)

    p = commands.add_parser("train", help="train a model on a prepared cache")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--config", help="JSON file of TrainConfig values (flags override)")
    _train_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="predictions.csv + metrics.json for a split")
    p.add_argument("run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--cache", help="another cache to evaluate on (external validation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resamples", type=int, default=2000, help="patient bootstrap resamples")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("report", help="figures, Grad-CAM grid, localisation scores")
    p.add_argument("run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--cam-outputs",
        default="Abnormal",
        help="comma-separated outputs for Grad-CAM grids, e.g. Abnormal,Effusion",
    )
    p.add_argument("--bbox", help="BBox_List_2017.csv (default: found beside the run's data)")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("compare", help="DeLong test of two runs on the same images")
    p.add_argument("run_a", help="run folder or predictions.csv")
    p.add_argument("run_b", help="run folder or predictions.csv")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", help="also write the table as CSV")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser("labels", help="score predictions against another label set")
    p.add_argument("run", help="run folder or predictions.csv")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--google", help="google2019_nih-chest-xray-labels.csv(.gz)")
    group.add_argument("--binary", help="a Tang-style 'image 0|1' label list")
    p.add_argument("--resamples", type=int, default=2000)
    p.set_defaults(func=cmd_labels)

    p = commands.add_parser("predict", help="score image files with a model")
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("images", nargs="+")
    p.add_argument("--revision", help="Hub revision (commit hash) when MODEL is a repo id")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--amp",
        choices=["off", "bf16", "fp16", "auto"],
        default="off",
        help="off: exact fp32; bf16: ~1.6x faster on an AVX512-BF16 CPU; auto/fp16: CUDA fp16",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--workers",
        type=int,
        help="decode threads (default: the cores available, at most 8)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="write the probabilities to this CSV instead of printing them")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("demo", help="synthetic data -> cache -> train -> evaluate")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a few seconds of training (CI)")
    p.set_defaults(func=cmd_demo)

    from chexvision_lib.publish import add_publish_commands

    add_publish_commands(commands)  # card, push

    from chexvision_lib.study import add_study_commands

    add_study_commands(commands)  # study, external

    from chexvision_lib.app import add_app_commands

    add_app_commands(commands)  # app, space
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"chexvision {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
