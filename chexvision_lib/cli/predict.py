"""`chexvision predict`: score image files with a model."""

from __future__ import annotations

import argparse

from chexvision_lib.core.disclaimer import DISCLAIMER


def run_predict(args: argparse.Namespace) -> None:
    from chexvision_lib.core.machine import available_cores
    from chexvision_lib.models.loading import load_model
    from chexvision_lib.models.predict import predict_images
    from chexvision_lib.runtime.devices import resolve_device

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


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="score image files with a model")
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--revision", help="Hub revision (commit hash) when MODEL is a repo id")
    p.add_argument("--batch-size", type=int, default=32, help="images scored per forward pass")
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
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("--out", help="write the probabilities to this CSV instead of printing them")
    p.set_defaults(func=run_predict)
