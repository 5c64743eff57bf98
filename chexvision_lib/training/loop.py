"""Training: `fit(TrainConfig)` reads a prepared cache and writes a run folder.

Run folder:
    config.json      the resolved TrainConfig (+ world size, effective batch size, data source)
    history.csv      one row per epoch: losses, per-class and macro AUC, binary AUC, lr, s, img/s;
                     with a weight EMA the same validation columns again for the averaged weights
                     (ema_val_loss, ema_macro_auc, ...); `monitor` is what early stopping watched
                     and `monitor_weights` whose it was ("raw" or "ema")
    checkpoints/last.pt   everything needed to resume (written atomically each epoch)
    model/           the best epoch's better weights (model.safetensors) + config.json with
                     thresholds, best_epoch and shipped_weights ("raw" or "ema")
    logs/            with --log: TensorBoard, MLflow, W&B (see experiment_log.py)

`fit` reads top to bottom in named phases: set up the runtime, open the data, build the model,
the optimiser and schedule (one `TrainState`), resume, the epoch loop (train_one_epoch, validate
the weights and their average, keep the best, checkpoint, stop early), then thresholds chosen on
validation with the best weights, which are the weights that ship.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chexvision_lib.core.atomic_files import recover_folder, write_json_atomic
from chexvision_lib.core.config import to_dict
from chexvision_lib.core.labels import FINDINGS, NUM_FINDINGS
from chexvision_lib.data.batches import Augment, BatchLoader, CachedSplit, augment, normalise
from chexvision_lib.data.cache import cache_fingerprint
from chexvision_lib.evaluation.calibration import apply_temperature, fit_temperatures
from chexvision_lib.evaluation.metrics import choose_thresholds_for, per_class_auc, roc_auc
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_loader
from chexvision_lib.models.registry import ChestClassifier, build_model
from chexvision_lib.runtime import distributed
from chexvision_lib.runtime.devices import autocast_dtype, resolve_device
from chexvision_lib.training.checkpoints import load_checkpoint, save_checkpoint, save_model_folder
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.ema import WeightEMA
from chexvision_lib.training.experiment_log import ExperimentLogs, StepLog
from chexvision_lib.training.hub_checkpoints import make_epoch_uploader
from chexvision_lib.training.losses import bce_from_probs, masked_bce, positive_weights
from chexvision_lib.training.optimisation import lr_lambda, make_optimizer, set_backbone_frozen
from chexvision_lib.training.state import TrainState


# --- one epoch of training, one pass of evaluation ----------------------------------------------
def train_one_epoch(
    model: torch.nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    pos_weight: torch.Tensor,
    spec: dict,
    amp_dtype: torch.dtype | None,
    epoch: int,
    show_progress: bool,
    ema: WeightEMA | None = None,
    step_log: StepLog | None = None,
) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen by all processes).

    After each optimiser step the weight EMA (if any) updates and the step's loss and learning
    rate go to the step log (if any)."""
    device = loader.device
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 7)
    settings = Augment(hflip=config.hflip)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    running = torch.zeros((), device=device)  # summed on the device: no host sync per step
    images = 0
    step_sum, step_images = torch.zeros((), device=device), 0  # this optimiser step's
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs} train",
        leave=False,
        disable=not show_progress,
    )
    steps = len(loader)
    for micro_step, (pixels, labels, _) in enumerate(bar):
        if config.augment:
            x = augment(pixels, spec["image_size"], settings, generator)
            x = x.sub_(spec["mean"][0]).div_(spec["std"][0])
        else:
            x = normalise(pixels, spec["mean"][0], spec["std"][0], spec["image_size"])
        x = x.contiguous(memory_format=memory_format)
        last_micro = (micro_step + 1) % config.accum_steps == 0 or micro_step + 1 == steps
        # Under DDP, skip the gradient all-reduce on micro-steps that do not step the optimiser.
        sync = contextlib.nullcontext() if last_micro else distributed.no_sync(model)
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = masked_bce(model(x), labels, pos_weight)
            scaler.scale(loss / config.accum_steps).backward()
        step_sum += loss.detach() * len(x)
        step_images += len(x)
        if last_micro:
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update()
            if step_log is not None:
                step_log.add(step_sum / step_images, lr)
            running += step_sum
            images += step_images
            step_sum.zero_()
            step_images = 0
    if step_log is not None:
        step_log.flush()
    # One sync per epoch: the loss and image count of every rank, for history.csv.
    totals = distributed.all_reduce_sum(
        torch.stack([running, torch.tensor(float(images), device=device)])
    )
    return float(totals[0]) / max(float(totals[1]), 1.0), int(totals[1])


def validation_row(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUCs for history.csv: per finding, macro over findings, binary (abnormal)."""
    row: dict[str, float] = {}
    if not np.isnan(probs[:, :NUM_FINDINGS]).all():
        aucs = per_class_auc(labels[:, :NUM_FINDINGS], probs[:, :NUM_FINDINGS])
        row.update({f"auc_{name}": float(a) for name, a in zip(FINDINGS, aucs, strict=True)})
        row["macro_auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    else:
        row["macro_auc"] = float("nan")
    row["binary_auc"] = float(roc_auc(labels[:, -1], probs[:, -1]))
    return row


def monitor_value(row: dict[str, float], prefix: str = "") -> float:
    """Early stopping watches macro AUC over the findings, or binary AUC where findings are
    unknown (binary datasets, binary head)."""
    value = row[prefix + "macro_auc"]
    return row[prefix + "binary_auc"] if math.isnan(value) else value


# --- the phases of a run ------------------------------------------------------------------------
@dataclass
class Runtime:
    """Where the run executes: the process group (or none), the device, the autocast dtype."""

    dist: distributed.DistState
    device: torch.device
    amp_dtype: torch.dtype | None


@dataclass
class RunData:
    train: CachedSplit
    val: CachedSplit
    train_loader: BatchLoader
    val_loader: BatchLoader
    pos_weight: torch.Tensor  # neg/pos per output, from the training split
    steps_per_epoch: int  # optimiser steps (micro-batches / accum_steps, rounded up)


def set_up_runtime(config: TrainConfig) -> Runtime:
    dist = distributed.setup(config.device)
    device = dist.device if dist.active else resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
    return Runtime(dist, device, autocast_dtype(config.amp, device))


def open_data(config: TrainConfig, runtime: Runtime) -> tuple[TrainConfig, RunData]:
    """The training and validation splits and their loaders; the config gains its image size."""
    folds = {"folds": config.folds, "fold": config.fold, "seed": config.seed}
    train_data = CachedSplit(config.cache, "train", **folds)
    val_data = CachedSplit(config.cache, "val", **folds)
    image_size = config.image_size or train_data.size
    if image_size > train_data.size:
        raise ValueError(
            f"image_size {image_size} exceeds the cache's {train_data.size} px; prepare a "
            "larger cache (upsampling a cache only blurs)"
        )
    config = replace(config, image_size=image_size)
    dist, device = runtime.dist, runtime.device
    train_loader = BatchLoader(
        train_data,
        config.batch_size,
        device,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
        on_device=config.cache_on_device,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(train_data)} training images "
            f"per process; lower batch_size"
        )
    val_loader = BatchLoader(
        val_data,
        config.batch_size * 2,
        device,
        shuffle=False,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    pos_weight = positive_weights(train_data.labels).to(device)
    steps_per_epoch = math.ceil(len(train_loader) / config.accum_steps)
    return config, RunData(
        train_data, val_data, train_loader, val_loader, pos_weight, steps_per_epoch
    )


def build_training_model(config: TrainConfig, device: torch.device) -> ChestClassifier:
    torch.manual_seed(config.seed)  # the initial weights derive from the seed alone
    model = build_model(
        config.model,
        image_size=config.image_size,
        head=config.head,
        dropout=config.dropout,
        pretrained=config.pretrained,
    )
    if config.init_from:
        model.load_state_dict(load_model(config.init_from).state_dict())
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def new_train_state(
    model: ChestClassifier, config: TrainConfig, steps_per_epoch: int, runtime: Runtime
) -> TrainState:
    """The optimiser and its schedule: warm-up + cosine per step, or x factor on a validation
    plateau (Tang et al., CheXNet); and the weights' moving average when ema_decay > 0."""
    optimizer = make_optimizer(model, config, runtime.device)
    scheduler, plateau, warmup = None, None, 0
    if config.lr_schedule == "cosine":
        warmup = int(config.warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(warmup, config.epochs * steps_per_epoch)
        )
    else:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    ema = None
    if config.ema_decay > 0:
        # Through the warm-up the average follows the weights (the torchvision references').
        ema = WeightEMA(model, config.ema_decay, config.ema_every, follow_steps=warmup)
    return TrainState(model, optimizer, scheduler, plateau, scaler, ema)


def resume_train_state(state: TrainState, run: Path, config: TrainConfig) -> None:
    """Restore a stopped run; its own config only (a changed one would not continue it)."""
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    recover_folder(run / "model")
    # The run folder may have moved (a copy, a Kaggle output): `out` is where it is now.
    saved, current = {**checkpoint["config"], "out": str(run)}, to_dict(config)
    if saved != current:
        changed = sorted(k for k in saved if saved[k] != current.get(k))
        raise ValueError(f"{run}: resume with the run's own config; these differ: {changed}")
    state.load_state_dict(checkpoint["state"])


def resolved_config(
    config: TrainConfig, run: Path, runtime: Runtime, data: RunData, spec: dict
) -> dict:
    """config.json: the config as run, plus what it resolved to on this machine and data."""
    return {
        **to_dict(config),
        "world_size": runtime.dist.world_size,
        "effective_batch_size": config.batch_size * config.accum_steps * runtime.dist.world_size,
        "effective_lr": config.lr,
        "device": str(runtime.device),
        "amp_dtype": str(runtime.amp_dtype).replace("torch.", "")
        if runtime.amp_dtype
        else "float32",
        "data_source": data.train.info.get("source", {}),
        "cache": {
            "path": str(config.cache),
            # A run and its cache mounted together elsewhere (a Kaggle output) are found again.
            "relative_to_run": os.path.relpath(Path(config.cache).resolve(), run.resolve()),
            "size": data.train.size,
            "settings": data.train.info["settings"],
            # What its index says (ids, patients, splits, labels): `evaluate --cache` counts
            # another cache as this run's own data only when this matches too.
            "index_sha256": cache_fingerprint(config.cache),
        },
        "preprocessing": spec,
    }


def run_epoch(
    epoch: int,
    state: TrainState,
    train_model: torch.nn.Module,
    data: RunData,
    config: TrainConfig,
    runtime: Runtime,
    show: bool,
    logs: ExperimentLogs,
) -> dict:
    """Train one epoch, then validate the weights (and their average); returns the epoch's
    history row."""
    model, spec, ema = state.model, state.model.preprocessing, state.ema
    step_log = StepLog(logs, state.step) if logs else None
    # Every random draw of this epoch derives from (seed, epoch): resuming is exact.
    torch.manual_seed(config.seed * 1_000_003 + epoch)
    frozen = epoch < config.freeze_epochs
    model.train()
    set_backbone_frozen(model, frozen)
    data.train_loader.set_epoch(epoch)
    started = time.perf_counter()
    train_loss, seen = train_one_epoch(
        train_model,
        data.train_loader,
        state.optimizer,
        state.scheduler,
        state.scaler,
        config,
        data.pos_weight,
        spec,
        runtime.amp_dtype,
        epoch,
        show,
        ema,
        step_log,
    )
    seconds = time.perf_counter() - started
    state.step += data.steps_per_epoch
    row = {
        "epoch": epoch + 1,
        "phase": "frozen" if frozen else "full",
        "train_loss": train_loss,
        **validate(model, data, config, runtime, "validate", show),
    }
    # The average validates like the weights; the better of the two is this epoch's candidate.
    if ema is not None:
        averaged = validate(ema.module, data, config, runtime, "validate EMA", show)
        row.update({f"ema_{name}": value for name, value in averaged.items()})
    raw_monitor = monitor_value(row)
    ema_monitor = monitor_value(row, "ema_") if ema is not None else -math.inf
    use_ema = ema_monitor > raw_monitor
    row["monitor"] = ema_monitor if use_ema else raw_monitor
    row["monitor_weights"] = "ema" if use_ema else "raw"
    return {
        **row,
        "lr": state.optimizer.param_groups[0]["lr"],
        "backbone_lr": 0.0 if frozen else state.optimizer.param_groups[1]["lr"],
        "seconds": seconds,
        "images_per_s": seen / seconds,
    }


def validate(
    model: ChestClassifier,
    data: RunData,
    config: TrainConfig,
    runtime: Runtime,
    desc: str,
    show: bool,
) -> dict[str, float]:
    """Validation loss and AUCs of one set of weights (every rank: predict_loader gathers)."""
    spec, amp = model.preprocessing, runtime.amp_dtype
    probs, labels = predict_loader(
        model, data.val_loader, spec, amp, config.channels_last, desc, show
    )
    loss = bce_from_probs(probs, labels, data.pos_weight.cpu().numpy())
    return {"val_loss": loss, **validation_row(probs, labels)}


def save_progress(run: Path, state: TrainState, config: TrainConfig) -> None:
    """history.csv and the resume checkpoint, each replaced atomically."""
    pd.DataFrame(state.history).to_csv(run / "history.csv.tmp", index=False)
    os.replace(run / "history.csv.tmp", run / "history.csv")
    save_checkpoint(run / "checkpoints" / "last.pt", state.state_dict(), to_dict(config))


def ship_best_model(
    run: Path,
    state: TrainState,
    data: RunData,
    config: TrainConfig,
    runtime: Runtime,
    resolved: dict,
    show: bool,
) -> None:
    """Reload the best epoch's weights (raw or averaged, whichever validated better), fit their
    temperatures and choose their thresholds on validation, save model/.

    Runs in the main process alone, so it reads the whole validation split itself."""
    if state.best_epoch < 1 or not (run / "model").is_dir():
        raise ValueError(
            f"{run}: no epoch gave a validation AUC to choose the shipped weights by: the "
            f"validation split ({len(data.val_loader.data)} images) has one class only for every "
            "output; give it more images (a larger --val-fraction, or more data)"
        )
    best = load_model(run / "model", device=runtime.device)
    whole_val = BatchLoader(data.val, config.batch_size * 2, runtime.device, shuffle=False)
    probs, labels = predict_loader(
        best,
        whole_val,
        best.preprocessing,
        runtime.amp_dtype,
        config.channels_last,
        "thresholds",
        show,
    )
    if config.temperature_scaling:
        # Calibrate first, then choose thresholds on the probabilities predict will output.
        best.temperatures = fit_temperatures(probs, labels)
        probs = apply_temperature(probs, best.temperatures)
    best.thresholds = choose_thresholds_for(probs, labels, config.threshold_method)
    best.to("cpu")
    extra = {
        "best_epoch": state.best_epoch,
        "shipped_weights": state.best_weights,
        "threshold_method": config.threshold_method,
        "training": resolved,
    }
    save_model_folder(best, run / "model", extra)


def run_files_to_log(run: Path) -> list[Path]:
    """What the experiment logs keep of a finished run: its history, the shipped model's config
    (thresholds, temperatures) and any figures already in the run folder."""
    figures = sorted(p for p in run.rglob("*.png") if "logs" not in p.relative_to(run).parts)
    return [run / "history.csv", run / "model" / "config.json", *figures]


# --- the loop -----------------------------------------------------------------------------------
def fit(config: TrainConfig, resume: bool = False, show_progress: bool = True) -> Path:
    """Train (or resume) a run; returns the run folder. See the module docstring for its layout."""
    run = Path(config.out)
    if not resume and (run / "checkpoints" / "last.pt").exists():
        raise FileExistsError(
            f"{run} already holds a run; resume it with --resume {run} or choose another --out"
        )
    runtime = set_up_runtime(config)
    main_process = runtime.dist.is_main
    config, data = open_data(config, runtime)
    model = build_training_model(config, runtime.device)
    state = new_train_state(model, config, data.steps_per_epoch, runtime)
    train_model = distributed.wrap(model, runtime.dist, find_unused=config.freeze_epochs > 0)
    if config.compile:
        train_model = torch.compile(train_model)
    if resume:
        resume_train_state(state, run, config)
    elif main_process:
        run.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(config, run, runtime, data, model.preprocessing)
    uploader = None
    if main_process:
        write_json_atomic(run / "config.json", resolved)
        if config.hub_checkpoint_repo:
            uploader = make_epoch_uploader(config.hub_checkpoint_repo, config.hub_checkpoint_every)

    show = show_progress and main_process
    # A run that already stopped early is finished: resuming it only re-derives the thresholds.
    last_epoch = state.epoch if state.stopped_early else config.epochs
    epoch_bar = tqdm(
        range(state.epoch, last_epoch),
        desc="epochs",
        disable=not show,
        initial=state.epoch,
        total=config.epochs,
    )
    # Rank 0 alone logs; a failure closes the logs as a failed run.
    with ExperimentLogs(config.log if main_process else (), run, state.step) as logs:
        logs.log_config(resolved)
        for epoch in epoch_bar:
            row = run_epoch(epoch, state, train_model, data, config, runtime, show, logs)
            improved = state.record_epoch(row, config.patience)
            if improved and main_process:
                weights = state.ema.module if state.best_weights == "ema" else model
                extra = {"best_epoch": epoch + 1, "shipped_weights": state.best_weights}
                save_model_folder(weights, run / "model", {**extra, "training": resolved})
            if state.plateau is not None:
                state.plateau.step(monitor_value(row))  # the lr follows the weights it updates
            if main_process:
                save_progress(run, state, config)
                if uploader is not None:
                    uploader(run, epoch + 1)
            logs.log_scalars(state.step, {f"epoch/{name}": value for name, value in row.items()})
            epoch_bar.set_postfix(val=f"{row['monitor']:.4f}", best=f"{state.best:.4f}")
            if state.stopped_early:
                break
        epoch_bar.close()

        # The shipped model is the best epoch's better weights (raw or averaged); its
        # temperatures and thresholds are chosen on validation, with those weights, here.
        if main_process:
            ship_best_model(run, state, data, config, runtime, resolved, show)
            if uploader is not None:
                uploader(run, state.epoch, final=True)
            for path in run_files_to_log(run):
                logs.log_file(path)
    distributed.barrier()
    distributed.cleanup(runtime.dist)
    return run
