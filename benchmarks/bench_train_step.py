"""Training images/s per model under four feeds: how close our data path gets to the ceiling.

Feeds, same model, optimiser (AdamW) and step as `train.train_one_epoch`:
  device : one normalised batch already on the device, reused every step (the ceiling: no data
           work at all)
  cache  : BatchLoader over a prepared 256 px cache + `batches.augment` + normalisation on the
           device (what `chexvision train` does)
  resident: the same with the whole cache held in device memory (`--cache-on-device`)
  pil    : torchvision DataLoader, num_workers = cores, PIL decode of the 1024 px PNGs +
           RandomResizedCrop + ToTensor + Normalize, then to the device
Warm-up steps (cuDNN autotuning, worker start-up, torch.compile) are not timed; then --steps
steps are timed, ending with a device synchronisation. Speed features are on by default and each
can be switched off: --no-channels-last, --no-amp; --compile switches torch.compile on.

    .venv/bin/python benchmarks/bench_train_step.py [--models seresnet densenet121] [--steps N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import common
import torch

from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.data.batches import Augment, BatchLoader, CachedSplit, augment, normalise
from chexvision_lib.data.cache import prepare_cache
from chexvision_lib.models.registry import build_model
from chexvision_lib.runtime.devices import autocast_dtype
from chexvision_lib.training.losses import masked_bce

FEEDS = ("device", "cache", "resident", "pil")


def cache_batches(
    loader: BatchLoader, spec: dict, size: int, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, labels) from the cache path, epoch after epoch, augmented on the device."""
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for pixels, labels, _ in loader:
            x = augment(pixels, size, Augment(), generator).sub_(spec["mean"][0])
            yield x.div_(spec["std"][0]).contiguous(memory_format=memory_format), labels
        epoch += 1


def pil_batches(
    loader, device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    while True:
        for x, labels in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            yield x, labels.to(device, non_blocking=True)


def device_batches(
    pixels: torch.Tensor, labels: torch.Tensor, spec: dict, size: int, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = normalise(pixels, spec["mean"][0], spec["std"][0], size)
    x = x.contiguous(memory_format=memory_format)
    while True:
        yield x, labels


class Trainer:
    """One model + optimiser + feed, stepping the way `train.train_one_epoch` does."""

    def __init__(self, model, batches, device, amp_dtype) -> None:
        self.model, self.batches, self.device, self.amp_dtype = model, batches, device, amp_dtype
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.pos_weight = torch.ones(len(OUTPUTS), device=device)
        model.train()

    def step(self) -> int:
        x, labels = next(self.batches)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss = masked_bce(self.model(x), labels, self.pos_weight)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return len(x)

    def images_per_second(self, steps: int) -> tuple[float, float]:
        """(images/s, main-thread CPU ms per step): when the CPU ms approach the wall ms per
        step, the step is host-bound (Python and kernel launches), not GPU-bound."""
        common.synchronize(self.device)
        started, cpu_started = time.perf_counter(), time.thread_time()
        images = sum(self.step() for _ in range(steps))
        common.synchronize(self.device)
        cpu_ms = 1000 * (time.thread_time() - cpu_started) / steps
        return images / (time.perf_counter() - started), cpu_ms


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_image_arguments(parser, n=1344 if cuda else 200)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["seresnet", "densenet121"]
        if cuda
        else ["seresnet_small", "seresnet", "densenet121"],
    )
    parser.add_argument("--feeds", nargs="+", choices=FEEDS, default=list(FEEDS))
    parser.add_argument("--size", type=int, default=256)
    # CPU defaults keep the whole run to a few minutes on 2 cores: figures there are rough.
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 8)
    parser.add_argument("--warmup", type=int, default=10 if cuda else 1, help="untimed steps")
    parser.add_argument("--steps", type=int, default=50 if cuda else 3, help="timed steps")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed rounds, feeds interleaved; the best round of each feed is kept",
    )
    parser.add_argument("--workers", type=int, default=common.CORES, help="PIL DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--amp", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16"
    )
    parser.add_argument("--no-amp", action="store_true", help="train in fp32")
    parser.add_argument("--no-channels-last", action="store_true", help="NCHW memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    amp_dtype = autocast_dtype("off" if args.no_amp else args.amp, device)
    channels_last = not args.no_channels_last
    print(common.describe_machine(device))
    print(
        f"batch {args.batch_size}, {args.size} px, {args.warmup} warm-up + {args.rounds} x "
        f"{args.steps} timed steps | amp {amp_dtype or 'off (fp32)'} | "
        f"channels_last {channels_last} | compile {args.compile}"
    )

    folder = common.scratch_folder("train-step", keep=True)
    needed = (args.warmup + args.steps * args.rounds) * args.batch_size
    paths = common.replicate(args.images, max(args.n, needed), folder / "png")
    cache = prepare_cache(
        common.index_table(paths, split="train"),
        folder / f"cache-{len(paths)}-{args.size}",
        size=args.size,
        workers=args.workers,
        progress=False,
    )
    data = CachedSplit(cache, "train")
    first = torch.from_numpy(data.read(torch.arange(args.batch_size).numpy())).unsqueeze(1)
    first_labels = torch.from_numpy(data.labels[: args.batch_size])

    rows = []
    for name in args.models:
        trainers: dict[str, Trainer] = {}
        for feed in args.feeds:
            torch.manual_seed(0)
            model = build_model(name, image_size=args.size).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            spec = model.preprocessing
            if feed == "device":
                batches = device_batches(
                    first.to(device), first_labels.to(device), spec, args.size, channels_last
                )
            elif feed in ("cache", "resident"):
                loader = BatchLoader(
                    data,
                    args.batch_size,
                    device,
                    shuffle=True,
                    drop_last=True,
                    on_device=feed == "resident",
                )
                batches = cache_batches(loader, spec, args.size, channels_last)
            else:
                loader = common.pil_loader(paths, args.size, args.batch_size, args.workers, device)
                batches = pil_batches(loader, device, channels_last)
            train_model = torch.compile(model) if args.compile else model
            trainers[feed] = Trainer(train_model, batches, device, amp_dtype)
            for _ in range(args.warmup):  # cuDNN autotuning, worker start-up, compilation
                trainers[feed].step()
        # Rounds interleave the feeds, so clock ramps and neighbours' load hit every feed alike.
        runs: dict[str, list[float]] = {feed: [] for feed in args.feeds}
        host_ms: dict[str, list[float]] = {feed: [] for feed in args.feeds}
        for _ in range(args.rounds):
            for feed, trainer in trainers.items():
                rate, cpu_ms = trainer.images_per_second(args.steps)
                runs[feed].append(rate)
                host_ms[feed].append(cpu_ms)
        for trainer in trainers.values():
            trainer.batches.close()
        del trainers
        rates = {feed: max(values) for feed, values in runs.items()}
        for feed, rate in rates.items():
            print(f"  {name} / {feed}: {' / '.join(f'{r:.0f}' for r in runs[feed])} img/s")
            wall_ms = 1000 * args.batch_size / rate
            row = {"model": name, "feed": feed, "img/s": rate, "ms/step": wall_ms}
            if device.type == "cuda":  # on a CPU the work runs in torch's other threads
                row["host CPU ms/step"] = min(host_ms[feed])
            if "device" in rates:
                row["% of ceiling"] = 100 * rate / rates["device"]
            if "pil" in rates:
                row["x PIL"] = rate / rates["pil"]
            rows.append(row)
    print()
    print(common.format_table(rows))
    print()
    print("targets: cache feed >= 90 % of the ceiling and >= 2x the PIL feed (on a GPU)")


if __name__ == "__main__":
    main()
