"""How long `chexvision score` takes on NIH's 25,596 official test images (target: < 30 s with
2,000 patient-bootstrap resamples).

Synthetic scores in another tool's format (`Image Index,prob_Atelectasis,...`, the 14 findings, no
abnormal column, so the abnormal score is derived) are written for every image of the real
test_list.txt, then `chexvision score` runs as a fresh process, as a user's shell starts it,
against the real Data_Entry CSV (the split lists beside it are found and checked): without
figures, with figures, and with figures plus Google's expert labels. A second table times the
phases in one process.

    .venv/bin/python benchmarks/bench_score.py [--resamples 2000] [--repeats 2] [--nih FOLDER]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
import pandas as pd

from chexvision_lib.core.labels import FINDINGS

NIH = common.REPO.parent / "shared" / "realdata" / "nih"
CSV = "Data_Entry_2017_v2020.csv.gz"
GOOGLE = "google2019_nih-chest-xray-labels.csv.gz"


def write_scores(nih: Path, out: Path, seed: int = 0) -> tuple[Path, int]:
    """Scores for every official test image that carry some signal about its labels."""
    from chexvision_lib.data.nih_index import read_data_entry
    from chexvision_lib.data.splits import read_split_list

    test = read_split_list(nih / "test_list.txt")
    labels = read_data_entry(nih / CSV).set_index("image_id").loc[test, list(FINDINGS)]
    rng = np.random.default_rng(seed)
    logits = 1.2 * labels.to_numpy() + rng.normal(0, 1, labels.shape) - 1.0
    frame = pd.DataFrame(1 / (1 + np.exp(-logits)), columns=[f"prob_{f}" for f in FINDINGS])
    frame.insert(0, "Image Index", test)
    path = out / "other_tool_predictions.csv"
    frame.to_csv(path, index=False, float_format="%.6f")
    return path, len(test)


def time_command(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "chexvision_lib.cli", "score", *argv],
        capture_output=True,
        text=True,
        cwd=common.REPO,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"chexvision score failed:\n{done.stderr}")
    return seconds


def phases(predictions: Path, nih: Path, out: Path, resamples: int) -> list[dict[str, object]]:
    """The same work as the command, one step at a time, in this process."""
    from chexvision_lib.cli.score import write_figures
    from chexvision_lib.data.nih_index import read_data_entry
    from chexvision_lib.evaluation import score
    from chexvision_lib.evaluation.evaluate import metrics_from_predictions

    rows, started = [], time.perf_counter()

    def step(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        rows.append({"phase": name, "seconds": now - started})
        started = now

    parsed = score.read_any_predictions(predictions)
    step("read the predictions CSV (25,596 x 15)")
    table = read_data_entry(nih / CSV)
    step("read the Data_Entry CSV (112,120 rows)")
    frame, _ = score.join_metadata(parsed, table, nih / CSV)
    score.split_check(frame["image_id"], score.find_split_lists(nih / CSV))
    step("join with the metadata, split check")
    metrics = metrics_from_predictions(frame, [None] * 15, split="test", n_resamples=resamples)
    step(f"AUCs + patient bootstrap ({resamples:,} resamples)")
    score.subgroups_from_predictions(frame)
    step("subgroups")
    folder = out / "phases"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "predictions.csv", index=False)
    step("write predictions.csv")
    write_figures(folder, frame, {**metrics, "split_description": "official test split"})
    step("figures (5 PNGs; ROC bands from 200 resamples)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per variant")
    parser.add_argument("--nih", type=Path, default=NIH, help="folder with NIH's CSV and lists")
    args = parser.parse_args()
    if not (args.nih / CSV).exists():
        raise SystemExit(f"{args.nih / CSV} not found; pass --nih FOLDER (../shared/realdata/nih)")
    print(common.describe_machine(common.resolve_device("cpu")))
    out = common.scratch_folder("score")
    predictions, n = write_scores(args.nih, out)
    print(f"{n:,} official test images, synthetic scores in {predictions}")
    base = [str(predictions), "--metadata", str(args.nih / CSV), "--resamples", str(args.resamples)]
    variants = {
        "score --no-figures": [*base, "--no-figures", "--out", str(out / "a")],
        "score (with figures)": [*base, "--out", str(out / "b")],
        "score --google (with figures)": [
            *base,
            "--google",
            str(args.nih / GOOGLE),
            "--out",
            str(out / "c"),
        ],
    }
    rows = []
    for name, argv in variants.items():
        times = [time_command(argv) for _ in range(args.repeats)]
        rows.append(
            {
                "command (fresh process)": name,
                "images": n,
                "resamples": args.resamples,
                "best s": min(times),
                "all runs s": " / ".join(f"{t:.1f}" for t in times),
                "< 30 s": "yes" if min(times) < 30 else "NO",
            }
        )
    print(common.format_table(rows))
    print()
    print(common.format_table(phases(predictions, args.nih, out, args.resamples)))


if __name__ == "__main__":
    main()
