"""Experiment logs: TensorBoard, MLflow and W&B, written inside the run folder, never to a server.

    RUN/logs/tensorboard/   event files     tensorboard --logdir RUN/logs/tensorboard
    RUN/logs/mlruns/        an MLflow store mlflow ui --backend-store-uri file:RUN/logs/mlruns
    RUN/logs/wandb/         a W&B offline run  wandb sync RUN/logs/wandb/offline-run-*

What a run logs: its resolved config (config.json) once; per optimiser step the training loss and
learning rate (`step/train_loss`, `step/lr`; under DDP the loss of rank 0's share); per epoch
every number of its history.csv row under the column's name (`epoch/macro_auc`,
`epoch/auc_Hernia`, `epoch/images_per_s`, the `ema_` columns...) at the step the epoch ended on;
at the end its files (history.csv, model/config.json, any figures). Nothing else: no environment,
no command line, no console output, so no token can reach a log.

One small interface (`log_config`, `log_scalars`, `log_file`, `close`), one class per tool, each
tool imported only when its backend opens: this module imports nothing heavy, because TrainConfig
checks its `log` names here and `chexvision --help` must stay instant.
"""

from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

# backend -> (the module it imports, the pip package that provides it)
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
}


def check_backends(names: tuple[str, ...]) -> None:
    """Each name a known backend whose package is installed; otherwise an error naming it."""
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"log: unknown backend {name!r}; known: {sorted(BACKENDS)}")
        module, package = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"log: {name} needs the {package!r} package (pip install {package})")


class ExperimentLog(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_scalars(self, step: int, values: dict[str, float]) -> None: ...
    def log_file(self, path: Path) -> None: ...
    def close(self, failed: bool = False) -> None: ...


def _stored_run_id(logs: Path, backend: str) -> str | None:
    """The backend's run id this run folder started, if any: a resumed run continues that run."""
    path = logs / f"{backend}_run_id"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _store_run_id(logs: Path, backend: str, run_id: str) -> None:
    (logs / f"{backend}_run_id").write_text(run_id, encoding="utf-8")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config values as `a.b` keys with text values (MLflow parameters)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


class TensorBoardLog:
    def __init__(self, run: Path, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run repeats the steps after its last checkpoint; purge_step hides what the
        # interrupted attempt logged from there on, so each step appears once.
        purge = first_step + 1 if first_step else None
        self.writer = SummaryWriter(str(run / "logs" / "tensorboard"), purge_step=purge)
        self.base = run.resolve()

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def log_file(self, path: Path) -> None:
        # TensorBoard shows images, not files: figures only.
        if path.suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            name = path.resolve().relative_to(self.base).with_suffix("").as_posix()
            self.writer.add_image(f"figures/{name}", pixels, dataformats="HWC")

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MlflowLog:
    def __init__(self, run: Path, first_step: int) -> None:
        # MLflow 3 keeps its file store only on request (its database store needs the full
        # mlflow package), and sends usage telemetry unless told not to: no network at run time.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        self.base = run.resolve()
        self.uri = (run / "logs" / "mlruns").resolve().as_uri()  # a local store, set explicitly
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = _stored_run_id(run / "logs", "mlflow")
        if self.run_id and not self._here(self.client.get_run(self.run_id).info.artifact_uri):
            self.run_id = None  # the run folder has moved: see _experiment_id
        self.resumed = self.run_id is not None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            created = self.client.create_run(self._experiment_id(), run_name=run.resolve().name)
            self.run_id = created.info.run_id
            _store_run_id(run / "logs", "mlflow", self.run_id)

    def _here(self, artifact_uri: str) -> bool:
        return artifact_uri.startswith(self.uri + "/")

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name("chexvision")
        if experiment is None:
            return self.client.create_experiment("chexvision")
        if self._here(experiment.artifact_location):
            return experiment.experiment_id
        # The run folder has moved since its store was made, and the store records absolute
        # artifact paths: a new experiment (and run) in the store as it is now, so nothing is
        # written where the folder used to be. The earlier run's metrics stay readable beside it.
        return self.client.create_experiment(f"chexvision (moved, {uuid.uuid4().hex[:6]})")

    def log_config(self, config: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, config, "config.json")
        if self.resumed:  # MLflow parameters are write-once; the first attempt logged them
            return
        params = [self._param(k, v[:6000]) for k, v in _flat(config).items()]
        for start in range(0, len(params), 100):  # MLflow's most parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._metric(k, v, stamp, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's most metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_file(self, path: Path) -> None:
        folder = path.resolve().relative_to(self.base).parent.as_posix()  # model/config.json
        self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbLog:
    def __init__(self, run: Path, first_step: int) -> None:
        import wandb

        logs = run / "logs"
        run_id = _stored_run_id(logs, "wandb") or uuid.uuid4().hex[:16]
        _store_run_id(logs, "wandb", run_id)
        self.run = wandb.init(
            # Offline unless the user's WANDB_MODE says otherwise; `wandb sync` uploads later.
            mode=os.environ.get("WANDB_MODE") or "offline",
            project=os.environ.get("WANDB_PROJECT") or "chexvision",
            name=run.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(logs),
            # No system metadata (host, command line, git), no console capture, no system-stats
            # probes (some query cloud metadata endpoints): only what this module logs.
            settings=wandb.Settings(
                console="off",
                disable_git=True,
                disable_code=True,
                x_disable_meta=True,
                x_disable_stats=True,
                x_disable_machine_info=True,
            ),
        )
        self.base = run.resolve()

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_file(self, path: Path) -> None:
        # A copy inside the W&B run folder (wandb.save would link to the file, and a link breaks
        # when the run folder is copied or moved).
        copy = Path(self.run.dir) / path.resolve().relative_to(self.base)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


OPENERS = {"tensorboard": TensorBoardLog, "mlflow": MlflowLog, "wandb": WandbLog}


class ExperimentLogs:
    """The backends one run logs to; with none, every call does nothing.

    Under DDP only rank 0 opens any (the loop passes no names elsewhere). A context manager: leaving
    it on an exception closes the backends as failed runs."""

    def __init__(self, names: tuple[str, ...], run: Path, first_step: int = 0) -> None:
        check_backends(names)
        if names:
            (run / "logs").mkdir(parents=True, exist_ok=True)
        self.backends: list[ExperimentLog] = [OPENERS[n](run, first_step) for n in names]

    def __bool__(self) -> bool:
        return bool(self.backends)

    def log_config(self, config: dict[str, Any]) -> None:
        for backend in self.backends:
            backend.log_config(config)

    def log_scalars(self, step: int, values: dict[str, Any]) -> None:
        """The finite numbers of `values` (a binary head's NaN macro AUC is no data point)."""
        numbers_only = {
            name: float(value)
            for name, value in values.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
            if math.isfinite(value)
        }
        for backend in self.backends:
            backend.log_scalars(step, numbers_only)

    def log_file(self, path: Path) -> None:
        if path.is_file():
            for backend in self.backends:
                backend.log_file(path)

    def close(self, failed: bool = False) -> None:
        for backend in self.backends:
            backend.close(failed)
        self.backends = []

    def __enter__(self) -> ExperimentLogs:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.close(failed=kind is not None)


class StepLog:
    """Per optimiser step, the training loss and learning rate, held on the device and written
    every `every` steps: one host sync per `every` steps, not one per step."""

    def __init__(self, logs: ExperimentLogs, step: int, every: int = 50) -> None:
        self.logs, self.step, self.every = logs, step, every
        self.pending: list[tuple[int, Any, float]] = []  # (step, loss tensor, lr)

    def add(self, loss: Any, lr: float) -> None:
        self.step += 1
        self.pending.append((self.step, loss, lr))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        import torch  # here, not at the top: see the module docstring

        losses = torch.stack([loss.float() for _, loss, _ in self.pending]).tolist()
        for (step, _, lr), loss in zip(self.pending, losses, strict=True):
            self.logs.log_scalars(step, {"step/train_loss": loss, "step/lr": lr})
        self.pending = []
