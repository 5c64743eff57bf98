"""`chexvision synth` and `chexvision prepare`: the data a run reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chexvision_lib.cli.arguments import at_least_one


def run_synth(args: argparse.Namespace) -> None:
    from chexvision_lib.data.synthetic import write_synthetic_nih

    summary = write_synthetic_nih(
        args.out, n_patients=args.patients, image_size=args.size, seed=args.seed
    )
    print(json.dumps(summary, indent=2, default=str))


def run_prepare(args: argparse.Namespace) -> None:
    from chexvision_lib.data.prepare import prepare

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
        ignore_disk_budget=args.ignore_disk_budget,
    )
    info = json.loads((folder / "cache.json").read_text())
    print(f"cache ready: {folder} ({info['n']} images at {args.size}px)")
    for line in skipped_report(folder, info):
        print(line)


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


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("synth", help="write the built-in synthetic NIH-layout dataset")
    p.add_argument("out", help="folder to write (Data_Entry CSV, split lists, boxes, images)")
    p.add_argument("--patients", type=int, default=240, help="number of synthetic patients")
    p.add_argument("--size", type=int, default=256, help="image side in px")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same set")
    p.set_defaults(func=run_synth)

    p = commands.add_parser("prepare", help="index a dataset and decode it once into a cache")
    p.add_argument("root", help="NIH copy, parquet folder, class folders or path,label CSV")
    p.add_argument("--out", required=True, help="the cache folder to write")
    p.add_argument("--size", type=int, default=256, help="cached image side in px")
    p.add_argument(
        "--kind",
        choices=["auto", "nih", "hub", "binary"],
        default="auto",
        help="dataset layout (auto: detected from ROOT)",
    )
    p.add_argument("--metadata-root", help="for --kind hub: folder with Data_Entry CSV + lists")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train_val patients carved out for validation (by patient)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation carve")
    p.add_argument("--views", help="comma-separated view positions to keep, e.g. PA or PA,AP")
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
