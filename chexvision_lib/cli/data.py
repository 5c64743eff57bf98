"""`chexvision synth` and `chexvision prepare`: the data a run reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chexvision_lib.cli.arguments import at_least_one

# The public datasets' kinds (data/prepare.SOURCE_KINDS), spelt out: `--help` imports no reader.
SOURCE_KINDS = ("chexpert", "mimic", "padchest", "rsna", "indiana", "vindr")


def run_synth(args: argparse.Namespace) -> None:
    from chexvision_lib.data.synthetic import write_synthetic_nih

    summary = write_synthetic_nih(
        args.out, n_patients=args.patients, image_size=args.size, seed=args.seed
    )
    print(json.dumps(summary, indent=2, default=str))


def run_prepare(args: argparse.Namespace) -> None:
    from chexvision_lib.data.prepare import prepare

    options = {
        name: getattr(args, dest)
        for dest, name in READER_OPTION_FLAGS.items()
        if getattr(args, dest) is not None
    }
    folder = prepare(
        args.root,
        args.out,
        size=args.size,
        kind=args.kind,
        options=options,
        metadata_root=args.metadata_root,
        val_fraction=args.val_fraction,
        seed=args.seed,
        views=tuple(args.views.split(",")) if args.views else None,
        skip_bad=args.skip_bad,
        clahe=args.clahe,
        workers=args.workers,
        ignore_disk_budget=args.ignore_disk_budget,
    )
    info = json.loads((folder / "cache.json").read_text())
    failed = f", {info['n_failed']:,} of them failed to decode" if info.get("n_failed") else ""
    print(f"cache ready: {folder} ({info['n']:,} images at {args.size}px{failed})")
    for line in dataset_report(folder, info):
        print(line)
    for line in skipped_report(folder, info):
        print(line)


def dataset_report(folder: Path, info: dict) -> list[str]:
    """What the cache holds: images, patients, views, splits, and which outputs the dataset
    labels (positives / known), computed from the cache's own index."""
    import pandas as pd

    from chexvision_lib.data.sources.common import dataset_summary

    table = pd.read_csv(folder / "index.csv", dtype={"patient": str, "image_id": str})
    # Images that failed to decode (--skip-bad) stay in the index, marked; they train nothing.
    if "ok" in table.columns:
        table = table[table["ok"].astype(bool)]
    summary = dataset_summary(table)
    source = info.get("source", {})
    views = ", ".join(f"{view} {count:,}" for view, count in summary["views"].items()) or "-"
    counts = source.get("counts") or table["split"].value_counts().to_dict()
    lines = [
        f"  kind {source.get('kind', '?')}: {summary['images']:,} images, "
        f"{summary['patients']:,} patients, {summary['frontal']:,} frontal (views: {views})",
        "  splits: "
        + ", ".join(f"{s} {int(counts.get(s, 0)):,}" for s in ("train", "val", "test")),
    ]
    if source.get("split_policy"):
        lines.append(f"  split policy: {source['split_policy']}")
    provided, unlabelled = [], []
    for name, entry in summary["labels"].items():
        known = entry["positive"] + entry["negative"]
        if known:
            provided.append(f"{name} {entry['positive']:,}/{known:,}")
        else:
            unlabelled.append(name)
    lines.append("  labelled outputs (positives/known): " + (", ".join(provided) or "none"))
    if unlabelled:
        lines.append(
            "  not labelled here (unknown, ignored by losses and metrics): " + ", ".join(unlabelled)
        )
    return lines


def skipped_report(folder: Path, info: dict) -> list[str]:
    """What the cache leaves out, by kind: images the index skipped (missing files, other views,
    names in no split list) and images that could not be decoded (listed in failed.csv)."""
    import pandas as pd

    lines = [
        f"  skipped {count:,} {kind.replace('_', ' ')}"
        for kind, count in sorted(info.get("source", {}).get("skipped", {}).items())
        if count
    ]
    failed = folder / "failed.csv"
    if info.get("n_failed") and failed.exists():
        # "PATH: not a readable image (detail)" -> "not a readable image": one line a kind
        errors = pd.read_csv(failed)["error"].astype(str)
        detail = errors.str.split(": ", n=1, regex=False).str[-1]
        reasons = detail.str.split(" (", regex=False).str[0].str.strip()
        for reason, count in reasons.value_counts().items():
            lines.append(f"  failed to decode {count:,}: {reason}")
        lines.append(f"  (the failed images and why: {failed})")
    return lines or ["  nothing skipped"]


# prepare's reader-option flags -> the option names the readers take (data/sources/*.OPTIONS);
# written out here because `--help` must not import the readers (pandas).
READER_OPTION_FLAGS = {
    "uncertainty": "uncertainty",
    "labeler": "labeler",
    "rsna_target": "target",
    "vindr_labels": "labels",
}


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("synth", help="write the built-in synthetic NIH-layout dataset")
    p.add_argument("out", help="folder to write (Data_Entry CSV, split lists, boxes, images)")
    p.add_argument("--patients", type=int, default=240, help="number of synthetic patients")
    p.add_argument("--size", type=int, default=256, help="image side in px")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same set")
    p.set_defaults(func=run_synth)

    p = commands.add_parser("prepare", help="index a dataset and decode it once into a cache")
    p.add_argument(
        "root",
        help="NIH copy, parquet folder, a public dataset's folder (CheXpert, MIMIC-CXR-JPG, "
        "PadChest, RSNA, Indiana, VinDr), class folders or a path,label CSV",
    )
    p.add_argument("--out", required=True, help="the cache folder to write")
    p.add_argument("--size", type=int, default=256, help="cached image side in px")
    p.add_argument(
        "--kind",
        choices=["auto", "nih", "hub", *SOURCE_KINDS, "binary"],
        default="auto",
        help="dataset layout (auto: detected from the file names below ROOT)",
    )
    p.add_argument(
        "--uncertainty",
        choices=["ignore", "ones", "zeros"],
        help="chexpert, mimic: what an uncertain (-1) label becomes: unknown (ignored by the "
        "loss and metrics; default), positive or negative (Irvin et al. 2019)",
    )
    p.add_argument(
        "--labeler",
        choices=["chexpert", "negbio"],
        help="mimic: which label file to read, mimic-cxr-2.0.0-chexpert.csv or -negbio.csv",
    )
    p.add_argument(
        "--rsna-target",
        choices=["abnormal", "lung-opacity"],
        help="rsna: Tang et al.'s two tasks: normal vs abnormal (all images; default) or normal "
        "vs lung opacity (drops 'No Lung Opacity / Not Normal')",
    )
    p.add_argument(
        "--vindr-labels",
        choices=["majority", "any"],
        help="vindr: a label is positive when at least 2 of the 3 radiologists marked it "
        "(majority; default) or when any did",
    )
    p.add_argument("--metadata-root", help="for --kind hub: folder with Data_Entry CSV + lists")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train_val patients carved out for validation (by patient)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation carve")
    p.add_argument(
        "--views",
        help="comma-separated view positions to keep, e.g. PA or PA,AP (NIH: PA, AP); the other "
        "datasets use PA, AP, AP_SUPINE, FRONTAL, LATERAL, OTHER and keep the frontal ones by "
        "default",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count) missing/unreadable images instead of stopping",
    )
    p.add_argument("--clahe", action="store_true", help="apply CLAHE once, at cache time")
    p.add_argument(
        "--workers",
        type=at_least_one("decode processes"),
        default=None,
        help="decode processes, at least 1 (default: the cores, <= 16)",
    )
    p.add_argument(
        "--ignore-disk-budget",
        action="store_true",
        help="write the cache even when the disk reports less free space than it needs "
        "(N x SIZE x SIZE bytes plus the index); the file is then left sparse, not reserved",
    )
    p.set_defaults(func=run_prepare)
