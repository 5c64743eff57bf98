"""`chexvision evaluate`, `report`, `compare` and `labels`: scoring a run's predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexvision_lib.cli.arguments import prevalence
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.explain.cam_methods import CAM_METHODS, DEFAULT_CAM_METHOD
from chexvision_lib.models.tta import TTA_CHOICES, TTA_HELP

SPLITS = ("train", "val", "test")


def run_evaluate(args: argparse.Namespace) -> None:
    from chexvision_lib.evaluation.evaluate import evaluate_run, summary_line

    metrics = evaluate_run(
        args.run,
        args.split,
        cache=args.cache,
        device=args.device,
        n_resamples=args.resamples,
        prevalence=args.prevalence,
        tta=args.tta,
    )
    print(summary_line(metrics))
    print(f"wrote {Path(metrics['folder']) / 'metrics.json'} and predictions.csv")
    with_tta = metrics.get("with_tta")
    if with_tta:
        record = with_tta["tta"]
        print(f"with test-time augmentation {record['name']} ({record['views']} views):")
        print(f"  {summary_line(with_tta)}")
        print(f"  wrote {Path(with_tta['folder']) / 'metrics.json'} and predictions.csv")
        print(f"  note: {record['thresholds']}")
    print(DISCLAIMER)


def run_report(args: argparse.Namespace) -> None:
    from chexvision_lib.reporting import report

    report.write_figures(args.run, args.split)
    for output in args.cam_outputs.split(","):
        report.gradcam_grid(
            args.run, args.split, output=output, cam_method=args.cam_method, device=args.device
        )
    print(f"figures in {Path(args.run) / args.split / 'figures'}")
    if args.bbox or report.has_boxes(args.run):
        table = report.localisation_report(
            args.run,
            args.split,
            bbox_csv=args.bbox,
            cam_method=args.cam_method,
            device=args.device,
            progress=True,
        )
        overall = table[table["finding"] == "all"].set_index("method")
        print(overall.to_string(float_format=lambda v: f"{v:.3f}"))
        outside = table.attrs.get("boxes_outside_image", 0)
        if outside:
            print(f"{outside} boxes lie partly or wholly outside their image (see the warning)")
        print(f"wrote {Path(args.run) / args.split / report.localisation_file(args.cam_method)}")


def run_compare(args: argparse.Namespace) -> None:
    from chexvision_lib.evaluation.compare import compare_runs, format_comparison

    table = compare_runs(args.run_a, args.run_b, args.split)
    print(format_comparison(table, "A", "B"))
    if args.out:
        table.to_csv(args.out, index=False)


def run_labels(args: argparse.Namespace) -> None:
    from chexvision_lib.core.predictions import read_predictions
    from chexvision_lib.evaluation import label_sets
    from chexvision_lib.evaluation.compare import predictions_path

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


def add_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test", choices=SPLITS, help="the split to score")


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("evaluate", help="predictions.csv + metrics.json for a split")
    p.add_argument("run", help="run folder written by `chexvision train`")
    add_split(p)
    p.add_argument("--cache", help="another cache to evaluate on (external validation)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resamples", type=int, default=2000, help="patient bootstrap resamples")
    p.add_argument(
        "--prevalence",
        type=prevalence,
        help="also give PPV and NPV at this prevalence (e.g. a screening population's)",
    )
    p.add_argument(
        "--tta",
        default="none",
        choices=TTA_CHOICES,
        help=TTA_HELP + "; other than none, the split is also scored with it, into "
        "<split>/tta-<name>/ beside the plain results",
    )
    p.set_defaults(func=run_evaluate)

    p = commands.add_parser("report", help="figures, Grad-CAM grid, localisation scores")
    p.add_argument("run", help="run folder with an evaluated split")
    add_split(p)
    p.add_argument(
        "--cam-outputs",
        default="Abnormal",
        help="comma-separated outputs for CAM grids, e.g. Abnormal,Effusion",
    )
    p.add_argument(
        "--cam-method",
        default=DEFAULT_CAM_METHOD,
        choices=CAM_METHODS,
        help="the CAM method (pytorch-grad-cam) of the grids and localisation scores; methods "
        "other than gradcam write localisation_<method>.csv (scorecam is slow: one forward "
        "pass per feature channel)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--bbox",
        help="BBox_List_2017.csv (default: found beside the run's data; RSNA and VinDr runs use "
        "their datasets' annotation files)",
    )
    p.set_defaults(func=run_report)

    p = commands.add_parser("compare", help="DeLong test of two runs on the same images")
    p.add_argument("run_a", help="run folder or predictions.csv")
    p.add_argument("run_b", help="run folder or predictions.csv")
    add_split(p)
    p.add_argument("--out", help="also write the table as CSV")
    p.set_defaults(func=run_compare)

    p = commands.add_parser("labels", help="score predictions against another label set")
    p.add_argument("run", help="run folder or predictions.csv")
    add_split(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--google", help="google2019_nih-chest-xray-labels.csv(.gz)")
    group.add_argument("--binary", help="a Tang-style 'image 0|1' label list")
    p.add_argument("--resamples", type=int, default=2000, help="patient bootstrap resamples")
    p.set_defaults(func=run_labels)
