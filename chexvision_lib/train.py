"""Training: `fit(TrainConfig)` reads a prepared cache and writes a run folder.

Run folder:
    config.json      the resolved TrainConfig (+ world size, effective batch size, data source)
    history.csv      one row per epoch: losses, per-class and macro AUC, binary AUC, lr, s, img/s
    checkpoints/last.pt   everything needed to resume (written atomically each epoch)
    model/           the best epoch's weights (model.safetensors) + config.json with thresholds
The loop reads top to bottom: set up, (resume), for each epoch: train_one_epoch, evaluate on
validation, keep the best, checkpoint, stop early. Then thresholds are chosen on validation with
the best weights, which are the weights that ship.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from chexvision_lib import distributed
from chexvision_lib.atomic_files import recover_folder, replace_folder, write_json_atomic
from chexvision_lib.batches import (
    Augment,
    BatchLoader,
    CachedSplit,
    augment,
    normalise,
    to_device,
)
from chexvision_lib.config import from_dict, to_dict
from chexvision_lib.labels import ABNORMAL, FINDINGS, NUM_FINDINGS
from chexvision_lib.metrics import choose_thresholds, per_class_auc, roc_auc
from chexvision_lib.models import ChestClassifier, build_model


@dataclass(frozen=True)
class TrainConfig:
    cache: str  # a folder written by `chexvision prepare`
    out: str  # the run folder
    model: str = "seresnet"
    head: Literal["dual", "binary"] = "dual"  # binary = one abnormal logit (Tang et al.)
    pretrained: str | None = None  # "imagenet" (torch hub cache) or a weights file path
    init_from: str | None = None  # a run or model folder to fine-tune from
    image_size: int | None = None  # model input; default: the cache's size
    epochs: int = 20
    batch_size: int = 32  # per process; effective = batch_size * accum_steps * world size
    accum_steps: int = 1
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd = Tang et al.'s recipe
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 1.0  # adamw: linear warm-up, then cosine decay to zero
    plateau_factor: float = 0.1  # sgd: lr x factor when validation stops improving
    plateau_patience: int = 1
    freeze_epochs: int = 0  # pretrained: train only the heads for this many epochs...
    unfreeze_lr_factor: float = 0.1  # ...then the backbone at lr x this factor
    patience: int = 5  # early stopping: epochs without a better validation monitor
    dropout: float = 0.0
    augment: bool = True
    hflip: bool = False  # off by default: a flip puts the heart on the wrong side
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (CUDA; minutes of warm-up)
    fused_optimizer: bool = True  # fused AdamW/SGD kernels on CUDA (no GradScaler host sync)
    cache_on_device: bool = False  # hold the whole training split in device memory
    threshold_method: Literal["youden", "f1"] = "youden"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = False  # deterministic kernels (slower); resume is then bit-exact
    threads: int | None = None  # CPU threads for torch (default: torch's choice)
    # k-fold cross-validation grouped by patient over train + val (0: the cache's own val split);
    # `fold` picks the validation fold. The test split is the same for every fold.
    folds: int = 0
    fold: int = 0
    # Push model/, history.csv and last.pt to this Hub repo's "checkpoints" branch every N epochs,
    # so a Kaggle session that hits its time limit loses nothing (token: see `publish`).
    hub_checkpoint_repo: str | None = None
    hub_checkpoint_every: int = 1

    def __post_init__(self) -> None:
        positive = (
            "epochs",
            "batch_size",
            "accum_steps",
            "patience",
            "plateau_patience",
            "hub_checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ValueError(f"freeze_epochs must be in [0, epochs), got {self.freeze_epochs}")
        if self.pretrained and self.init_from:
            raise ValueError("pass either pretrained or init_from, not both")


# --- set-up helpers -----------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. T4s have no fast bf16, so CUDA defaults to fp16."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp: fp16 needs a CUDA device; use 'bf16' or 'off' on the CPU")
        return torch.float16
    return torch.bfloat16 if amp == "bf16" else None


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """neg/pos per output over known labels of the training split (1 where a class is absent)."""
    known = labels >= 0
    positives = ((labels == 1) & known).sum(axis=0)
    negatives = ((labels == 0) & known).sum(axis=0)
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def masked_bce(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Weighted BCE over the known (>= 0) labels; a binary head's one logit meets the last label."""
    if logits.shape[1] == 1:
        labels, pos_weight = labels[:, -1:], pos_weight[-1:]
    known = (labels >= 0).float()
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), labels.clamp(min=0), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1.0)


def bce_from_probs(probs: np.ndarray, labels: np.ndarray, pos_weight: np.ndarray) -> float:
    """The training loss, from stored probabilities (validation loss for history.csv)."""
    known = (labels >= 0) & ~np.isnan(probs)
    p = np.clip(np.nan_to_num(probs), 1e-7, 1 - 1e-7)
    y = labels.clip(min=0)
    losses = -(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((losses * known).sum() / max(known.sum(), 1))


def lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(model: ChestClassifier, config: TrainConfig, device: torch.device):
    # Two groups so the two-phase schedule can run the backbone at a lower rate once unfrozen.
    backbone_lr = config.lr * (config.unfreeze_lr_factor if config.freeze_epochs else 1.0)
    groups = [
        {"params": model.head_parameters(), "lr": config.lr, "name": "head"},
        {"params": model.backbone_parameters(), "lr": backbone_lr, "name": "backbone"},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            groups,
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=config.fused_optimizer and device.type == "cuda",
        )
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        fused=config.fused_optimizer and device.type == "cuda",
    )


def set_backbone_frozen(model: ChestClassifier, frozen: bool) -> None:
    """Frozen means frozen: no gradients AND batch-norm statistics kept (eval mode)."""
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        model.backbone.eval()


# --- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume") from None
    except Exception as error:  # torn, truncated or foreign files all land here
        raise ValueError(f"{path}: not a readable CheXVision checkpoint ({error})") from None


def save_model_folder(model: ChestClassifier, folder: Path, extra: dict) -> None:
    """save_pretrained into a temporary folder, then swap it in place of `folder`."""
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, config=extra)
    (temporary / "README.md").unlink(missing_ok=True)  # the card is written by `publish`
    replace_folder(temporary, folder)


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
) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen by all processes)."""
    device = loader.device
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 7)
    settings = Augment(hflip=config.hflip)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    running = torch.zeros((), device=device)  # summed on the device: no host sync per step
    images = 0
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
        running += loss.detach() * len(x)
        images += len(x)
        if last_micro:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
    # One sync per epoch: the loss and image count of every rank, for history.csv.
    totals = distributed.all_reduce_sum(
        torch.stack([running, torch.tensor(float(images), device=device)])
    )
    return float(totals[0]) / max(float(totals[1]), 1.0), int(totals[1])


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: BatchLoader,
    spec: dict,
    amp_dtype: torch.dtype | None,
    channels_last: bool = True,
    desc: str = "predict",
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities (n, 15) in split order; NaN findings for a binary head.

    Under DDP each rank predicts its share and the shares are gathered; padding duplicates are
    dropped by position, so every image is counted exactly once.
    """
    model.eval()
    device = loader.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    probs, positions = [], []
    for pixels, _, index in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        x = normalise(pixels, spec["mean"][0], spec["std"][0], spec["image_size"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x.contiguous(memory_format=memory_format))
        probs.append(torch.sigmoid(logits.float()))
        positions.append(to_device(index, device))
    p = torch.cat(probs) if probs else torch.zeros(0, 1, device=device)
    pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long, device=device)
    if loader.world_size > 1:  # every rank must get here: gather is a collective
        p, pos = distributed.gather(p), distributed.gather(pos)
    n = len(loader.data)
    out = np.full((n, NUM_FINDINGS + 1), np.nan, dtype=np.float64)
    pos_np, p_np = pos.cpu().numpy(), p.cpu().numpy().astype(np.float64)
    if p_np.shape[1] == 1:
        out[pos_np, -1] = p_np[:, 0]
    else:
        out[pos_np] = p_np
    return out, loader.data.labels.astype(np.float64)


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


def monitor_value(row: dict[str, float]) -> float:
    """Early stopping watches macro AUC over the findings, or binary AUC where findings are
    unknown (binary datasets, binary head)."""
    value = row["macro_auc"]
    return row["binary_auc"] if math.isnan(value) else value


# --- the loop -----------------------------------------------------------------------------------
def fit(config: TrainConfig, resume: bool = False, show_progress: bool = True) -> Path:
    """Train (or resume) a run; returns the run folder. See the module docstring for its layout."""
    run = Path(config.out)
    ckpt_path = run / "checkpoints" / "last.pt"
    if not resume and ckpt_path.exists():
        raise FileExistsError(
            f"{run} already holds a run; resume it with --resume {run} or choose another --out"
        )
    dist = distributed.setup(config.device)
    device = dist.device if dist.active else resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
    amp_dtype = autocast_dtype(config.amp, device)

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
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        image_size=image_size,
        head=config.head,
        dropout=config.dropout,
        pretrained=config.pretrained,
    )
    if config.init_from:
        model.load_state_dict(load_model(config.init_from).state_dict())
    spec = model.preprocessing
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

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
    optimizer = make_optimizer(model, config, device)
    steps_per_epoch = math.ceil(len(train_loader) / config.accum_steps)
    if config.optimizer == "adamw":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lr_lambda(int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch),
        )
        plateau = None
    else:
        scheduler = None
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_model = distributed.wrap(model, dist, find_unused=config.freeze_epochs > 0)
    if config.compile:
        train_model = torch.compile(train_model)

    state = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0}
    history: list[dict] = []
    if resume:
        checkpoint = load_checkpoint(ckpt_path)
        recover_folder(run / "model")
        if checkpoint["config"] != to_dict(config):
            changed = sorted(
                k for k in checkpoint["config"] if checkpoint["config"][k] != to_dict(config).get(k)
            )
            raise ValueError(f"{run}: resume with the run's own config; these differ: {changed}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if plateau is not None:
            plateau.load_state_dict(checkpoint["plateau"])
        scaler.load_state_dict(checkpoint["scaler"])
        state, history = checkpoint["state"], checkpoint["history"]
    elif dist.is_main:
        run.mkdir(parents=True, exist_ok=True)

    resolved = {
        **to_dict(config),
        "world_size": dist.world_size,
        "effective_batch_size": config.batch_size * config.accum_steps * dist.world_size,
        "effective_lr": config.lr,
        "device": str(device),
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "data_source": train_data.info.get("source", {}),
        "cache": {
            "path": str(config.cache),
            "size": train_data.size,
            "settings": train_data.info["settings"],
        },
        "preprocessing": spec,
    }
    if dist.is_main:
        write_json_atomic(run / "config.json", resolved)

    uploader = None
    if config.hub_checkpoint_repo and dist.is_main:
        from chexvision_lib.publish import make_epoch_uploader  # lazy: publish imports train

        uploader = make_epoch_uploader(config.hub_checkpoint_repo, config.hub_checkpoint_every)

    show = show_progress and dist.is_main
    # A run that already stopped early is finished: resuming it only re-derives the thresholds.
    last_epoch = state["epoch"] if state.get("stopped_early") else config.epochs
    epoch_bar = tqdm(
        range(state["epoch"], last_epoch),
        desc="epochs",
        disable=not show,
        initial=state["epoch"],
        total=config.epochs,
    )
    for epoch in epoch_bar:
        # Every random draw of this epoch derives from (seed, epoch): resuming is exact.
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        frozen = epoch < config.freeze_epochs
        model.train()
        set_backbone_frozen(model, frozen)
        train_loader.set_epoch(epoch)
        started = time.perf_counter()
        train_loss, seen = train_one_epoch(
            train_model,
            train_loader,
            optimizer,
            scheduler,
            scaler,
            config,
            pos_weight,
            spec,
            amp_dtype,
            epoch,
            show,
        )
        seconds = time.perf_counter() - started
        state["step"] += steps_per_epoch
        probs, labels = predict_loader(
            model, val_loader, spec, amp_dtype, config.channels_last, "validate", show
        )
        val_loss = bce_from_probs(probs, labels, pos_weight.cpu().numpy())
        row = {
            "epoch": epoch + 1,
            "phase": "frozen" if frozen else "full",
            "train_loss": train_loss,
            "val_loss": val_loss,
            **validation_row(probs, labels),
            "lr": optimizer.param_groups[0]["lr"],
            "backbone_lr": 0.0 if frozen else optimizer.param_groups[1]["lr"],
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }
        history.append(row)
        value = monitor_value(row)
        improved = value > state["best"]
        if improved:
            state.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
            if dist.is_main:
                save_model_folder(
                    model, run / "model", {"best_epoch": epoch + 1, "training": resolved}
                )
        else:
            state["bad_epochs"] += 1
        if plateau is not None:
            plateau.step(value)
        state["epoch"] = epoch + 1
        stop = state["bad_epochs"] >= config.patience
        state["stopped_early"] = stop
        if dist.is_main:
            pd.DataFrame(history).to_csv(run / "history.csv.tmp", index=False)
            os.replace(run / "history.csv.tmp", run / "history.csv")
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "plateau": plateau.state_dict() if plateau else None,
                    "scaler": scaler.state_dict(),
                    "state": state,
                    "history": history,
                    "config": to_dict(config),
                },
            )
            if uploader is not None:
                uploader(run, epoch + 1)
        epoch_bar.set_postfix(val=f"{value:.4f}", best=f"{state['best']:.4f}")
        if stop:
            break
    epoch_bar.close()

    # The shipped model is the best epoch's; its thresholds are chosen on validation here.
    best = load_model(run / "model", device=device) if dist.is_main else None
    if dist.is_main:
        probs, labels = predict_loader(
            best,
            val_loader_single(val_data, config, device),
            spec,
            amp_dtype,
            config.channels_last,
            "thresholds",
            show,
        )
        best.thresholds = choose_thresholds_for(probs, labels, config.threshold_method)
        best.to("cpu")
        save_model_folder(
            best,
            run / "model",
            {
                "best_epoch": state["best_epoch"],
                "threshold_method": config.threshold_method,
                "training": resolved,
            },
        )
        if uploader is not None:
            uploader(run, state["epoch"], final=True)
    distributed.barrier()
    distributed.cleanup(dist)
    return run


def val_loader_single(data: CachedSplit, config: TrainConfig, device: torch.device) -> BatchLoader:
    return BatchLoader(data, config.batch_size * 2, device, shuffle=False)


def choose_thresholds_for(probs: np.ndarray, labels: np.ndarray, method: str) -> list[float | None]:
    """Per-output thresholds from validation; None where an output has no usable labels."""
    thresholds: list[float | None] = []
    for column in range(probs.shape[1]):
        known = (labels[:, column] >= 0) & ~np.isnan(probs[:, column])
        y = labels[known, column]
        if known.sum() == 0 or y.min() == y.max():
            thresholds.append(None)
        else:
            thresholds.append(
                float(choose_thresholds(y[:, None], probs[known, column][:, None], method)[0])
            )
    return thresholds


def load_model(
    folder: str | Path, device: torch.device | str = "cpu", revision: str | None = None
) -> ChestClassifier:
    """Load a model folder (or a run folder's model/, or a Hub repo id) without unpickling."""
    path = Path(folder)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    source = str(path) if path.exists() else str(folder)
    try:
        model = ChestClassifier.from_pretrained(source, revision=revision)
    except Exception as error:
        raise ValueError(f"{folder}: cannot load a CheXVision model ({error})") from None
    return model.to(device).eval()


def config_from_dict(values: dict) -> TrainConfig:
    return from_dict(TrainConfig, values)


__all__ = ["TrainConfig", "fit", "load_model", "config_from_dict", "ABNORMAL"]
