"""`chexvision predict`: score image files with a model.

Every file is tried: one that cannot be read is a row of its own (empty probabilities, the reason
in `error`), never the end of the batch. `--out` writes the CSV as each batch finishes, so an
interrupted run keeps what it scored. See UNREADABLE_HELP for the exit status.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

from chexvision_lib.cli.arguments import at_least_one
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.models.tta import TTA_CHOICES, TTA_HELP

UNREADABLE_HELP = (
    "Unreadable files (missing, empty, truncated, not an image, larger than the pixel limit or "
    "smaller than 16x16; sizes are checked from the header, before decoding) do not stop the "
    "others: each becomes a row with empty probabilities and the reason in the 'error' column, "
    "which is empty for scored rows. Without --skip-bad, predict scores every readable file, "
    "then exits with status 2 naming every unreadable one (the --out CSV then holds the scored "
    "rows and the error rows). With --skip-bad it exits 0 and prints how many files of each "
    "kind it skipped. --out writes rows as each batch finishes, so an interrupted run keeps the "
    "rows scored so far; the table and --json are printed when every file is done."
)


def _write_all(handle: BinaryIO, text: str) -> None:
    """One unbuffered write per batch: the file never ends inside a row a flush left behind."""
    data = memoryview(text.encode("utf-8"))
    while data:
        data = data[handle.write(data) :]


def run_predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from chexvision_lib.core.machine import available_cores
    from chexvision_lib.models.loading import load_model
    from chexvision_lib.models.predict import failure_summary, prediction_columns, score_files
    from chexvision_lib.models.tta import THRESHOLD_NOTE, TTA_VIEWS
    from chexvision_lib.runtime.devices import resolve_device

    model = load_model(args.model, resolve_device(args.device), revision=args.revision)
    workers = args.workers or min(8, available_cores())
    batches = score_files(
        model, args.images, batch_size=args.batch_size, workers=workers, amp=args.amp, tta=args.tta
    )
    if args.tta != "none":  # stderr: with --json, stdout holds only the JSON
        views = TTA_VIEWS[args.tta]
        print(
            f"test-time augmentation {args.tta} ({views} views): {THRESHOLD_NOTE}", file=sys.stderr
        )
    failures, frames, rows = [], [], 0
    if args.out:
        with open(args.out, "wb", buffering=0) as handle:
            _write_all(handle, pd.DataFrame(columns=prediction_columns()).to_csv(index=False))
            try:
                for batch in batches:
                    _write_all(handle, batch.frame.to_csv(index=False, header=False))
                    rows += len(batch.frame)
                    failures += batch.failures
            except KeyboardInterrupt:
                print(f"{args.out} holds the {rows} rows written so far", file=sys.stderr)
                raise
        print(f"wrote {rows} rows to {args.out}")
        print(DISCLAIMER)
    else:
        for batch in batches:
            frames.append(batch.frame)
            failures += batch.failures
        frame = pd.concat(frames, ignore_index=True)
        rows = len(frame)
        if args.json:
            print(frame.to_json(orient="records", indent=2))
        else:
            # The view set is said once above (stderr), not in a row of the table.
            shown = frame.drop(columns="tta") if failures else frame.drop(columns=["error", "tta"])
            print(shown.set_index("image").T.to_string(float_format=lambda v: f"{v:.4f}"))
            print(DISCLAIMER)
    if not failures:
        return
    bad = len(failures)
    counted = f"{bad} of {rows} files could not be read ({failure_summary(failures)})"
    if args.skip_bad:
        print(f"skipped {counted}; their rows give the reason in 'error'", file=sys.stderr)
        return
    raise ValueError(
        f"{counted}: {'; '.join(str(error) for error in failures)}. "
        f"{args.out or 'The output above'} holds {rows - bad} scored and {bad} error rows; "
        "--skip-bad accepts them (exit 0)"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict",
        help="score image files with a model",
        description="Score image files with a model. " + UNREADABLE_HELP,
    )
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM .dcm, ...)")
    p.add_argument("--revision", help="Hub revision (commit hash) when MODEL is a repo id")
    p.add_argument(
        "--batch-size",
        type=at_least_one("images per forward pass"),
        default=32,
        help="images scored per forward pass (>= 1; default 32)",
    )
    p.add_argument(
        "--amp",
        choices=["off", "bf16", "fp16", "auto"],
        default="off",
        help="off: exact fp32; bf16: ~1.6x faster on an AVX512-BF16 CPU; auto/fp16: CUDA fp16",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--tta",
        default="none",
        choices=TTA_CHOICES,
        help=TTA_HELP + "; every row records it in the 'tta' column",
    )
    p.add_argument(
        "--workers",
        type=at_least_one("decode threads"),
        help="decode threads, >= 1 (default: the cores available, at most 8)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="exit 0 when some files cannot be read (their rows keep the reason in 'error') "
        "instead of exit 2 naming them; either way every readable file is scored",
    )
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument(
        "--out",
        help="write the probabilities to this CSV instead of printing them, a batch at a time",
    )
    p.set_defaults(func=run_predict)
