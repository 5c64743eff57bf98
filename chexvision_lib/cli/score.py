"""`chexvision score`: metrics.json, subgroups and figures for a predictions file of any tool."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from chexvision_lib.cli.arguments import at_least_one, prevalence
from chexvision_lib.core.disclaimer import DISCLAIMER

if TYPE_CHECKING:
    import pandas as pd


def write_figures(folder: Path, frame: pd.DataFrame, metrics: dict) -> list[Path]:
    """The figures `report` draws for an evaluated split (ROC grid, AUC bars, ROC of Abnormal,
    confusion matrices, reliability diagrams), under FOLDER/figures/. Confusion matrices are at
    0.5: scores from another tool carry no validation-chosen thresholds."""
    from chexvision_lib.core.labels import ABNORMAL, FINDINGS
    from chexvision_lib.evaluation.score import ABNORMAL_RULE
    from chexvision_lib.reporting import plots
    from chexvision_lib.reporting.calibration_plots import reliability_diagram

    out = folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    label = metrics.get("split_description")
    outputs = metrics.get("outputs", {})
    plottable = plots.plottable_outputs(frame)
    findings = [f for f in FINDINGS if "at_0.5" in outputs.get(f, {})]
    written = []
    if any(f in plottable for f in FINDINGS):
        plots.roc_grid(frame, metrics, out / "roc_findings.png", split_label=label)
        plots.auc_bars(metrics, out / "auc_bars.png", split_label=label)
        plots.confusion_matrices(
            metrics,
            out / "confusion_findings.png",
            outputs=findings,
            at="at_0.5",
            split_label=label,
        )
        written += [out / "roc_findings.png", out / "auc_bars.png", out / "confusion_findings.png"]
    if ABNORMAL in plottable:
        if metrics.get("abnormal_derived"):  # said on the abnormal figures themselves
            label = f"abnormal score derived: {ABNORMAL_RULE}\n{label}"
        plots.roc_binary(frame, metrics, out / "roc_abnormal.png", split_label=label)
        plots.confusion_matrices(
            metrics,
            out / "confusion_abnormal.png",
            outputs=[ABNORMAL],
            at="at_0.5",
            split_label=label,
        )
        written += [out / "roc_abnormal.png", out / "confusion_abnormal.png"]
    if plottable:
        reliability_diagram(frame, out / "reliability.png", split_label=label)
        written.append(out / "reliability.png")
    return written


def run_score(args: argparse.Namespace) -> None:
    from chexvision_lib.evaluation.compare import format_comparison
    from chexvision_lib.evaluation.evaluate import summary_line
    from chexvision_lib.evaluation.score import score_predictions, summary_lines

    result = score_predictions(
        args.predictions,
        args.metadata,
        split_lists=args.split_list,
        google=args.google,
        binary=args.binary,
        reference=args.reference,
        out=args.out,
        n_resamples=args.resamples,
        prevalence=args.prevalence,
        logits=args.logits,
        reference_logits=args.reference_logits,
        skip_unknown=args.skip_unknown,
    )
    metrics = result.metrics
    figures = [] if args.no_figures else write_figures(result.folder, result.frame, metrics)
    print(summary_line(metrics))
    for line in summary_lines(metrics):
        print(line)
    if result.expert is not None:
        for entry in metrics["expert_labels"]["files"]:
            print(f"{Path(entry['file']).name}: {entry['n_overlap']:,} image(s) overlap")
        if len(result.expert):
            print(result.expert.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if result.comparison is not None:
        print(f"against {args.reference}:")
        print(format_comparison(result.comparison, "scored", "reference"))
    written = ", ".join(sorted(p.name for p in result.folder.iterdir() if p.is_file()))
    print(f"wrote {result.folder}: {written}" + (f"; {len(figures)} figures" if figures else ""))
    print(DISCLAIMER)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "score",
        help="score a predictions CSV of any tool against NIH's metadata",
        description="Score predictions written by any tool: one row per image (column Image "
        "Index, image_id, image, filename or path), one probability column per finding (named "
        "as the finding, with or without a prob_ prefix; any case; spaces or underscores; any "
        "subset) and optionally Abnormal, prob_Abnormal or No Finding (scored as 1 - p); without "
        "one the abnormal score is the max of the finding probabilities, and the output says so. "
        "Labels, patients, age, sex and view come from the metadata.",
    )
    p.add_argument("predictions", help="the predictions CSV (.csv or .csv.gz)")
    p.add_argument(
        "--metadata", required=True, help="Data_Entry_2017*.csv(.gz): labels and patients"
    )
    p.add_argument(
        "--split-list",
        action="append",
        help="train_val_list.txt / test_list.txt to check which split the images come from "
        "(repeatable; default: those beside --metadata)",
    )
    p.add_argument("--google", help="google2019_nih-chest-xray-labels.csv(.gz): expert labels")
    p.add_argument(
        "--binary",
        action="append",
        default=[],
        help="a Tang-style 'image 0|1' label list, scored against Abnormal (repeatable)",
    )
    p.add_argument("--reference", help="another predictions CSV: DeLong test per output")
    p.add_argument("--out", help="output folder (default: PREDICTIONS_score/ beside the file)")
    p.add_argument(
        "--prevalence",
        type=prevalence,
        help="also give PPV and NPV at this prevalence (e.g. a screening population's)",
    )
    p.add_argument(
        "--resamples",
        type=at_least_one("patient bootstrap resamples"),
        default=2000,
        help="patient bootstrap resamples",
    )
    p.add_argument("--logits", action="store_true", help="the scores are logits: apply the sigmoid")
    p.add_argument(
        "--reference-logits", action="store_true", help="the reference's scores are logits"
    )
    p.add_argument(
        "--skip-unknown",
        action="store_true",
        help="count and skip images absent from the metadata (default: an error)",
    )
    p.add_argument("--no-figures", action="store_true", help="write no figures")
    p.set_defaults(func=run_score)
