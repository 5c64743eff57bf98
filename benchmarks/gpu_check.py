"""The GPU check: everything that needs CUDA, in one run of under 8 minutes, as one Markdown table.

For a person with a CUDA machine (a Kaggle T4 x2 session, a lab GPU): run from the repository root

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py --out gpu_check.md

Checks, each a subprocess with its own time limit so that one hang cannot eat the others' time:
  cuda-tests   pytest tests/test_cuda.py (AMP, no host syncs, resident loader, CAM on the GPU)
  train        training img/s of seresnet, densenet121 and timm/convnext_tiny at 256 px: our cache
               path vs tensors already on the GPU (bench_train_step.py, feeds device + cache)
  inference    1,344 real-size radiographs through predict_images (bench_inference.py)
  ddp          one epoch of a tiny run under torchrun on 2 GPUs (only with >= 2 GPUs)
  demo         `make demo`'s pipeline (chexvision demo): time and test AUC
It writes the table (check, result, seconds) and each benchmark's own table to `--out`, ready to
paste into benchmarks/README.md, and exits 1 if a check failed. `--allow-cpu` runs the same
orchestration without a GPU (CUDA-only checks are then skipped), which is how the test suite
checks this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("cuda-tests", "train", "inference", "ddp", "demo")
TRAIN_MODELS = ("seresnet", "densenet121", "timm/convnext_tiny")


@dataclass
class Check:
    name: str
    status: str = "skipped"  # passed | failed | skipped
    result: str = ""
    seconds: float = 0.0
    tables: list[str] = field(default_factory=list)


def run_command(command: list[str], log: Path, timeout: float) -> tuple[int, str, float]:
    """Run `command` in the repository root; (exit code, stdout + stderr, seconds). A command that
    runs past `timeout` is killed with its whole process group (torchrun's workers and data
    loader workers too, which would otherwise hold the GPU into the next check) and reported as
    exit code 124, like `timeout(1)`."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, so a timeout kills every descendant
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        code = 124
        output = f"{output or ''}\n(killed after {timeout:.0f} s)"
    log.write_text(f"$ {' '.join(command)}\n{output}")
    return code, output, time.perf_counter() - started


def markdown_tables(output: str) -> list[str]:
    """The Markdown tables a benchmark printed (runs of lines starting with '|')."""
    tables, current = [], []
    for line in [*output.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def finish(check: Check, code: int, output: str, seconds: float, log: Path) -> Check:
    check.seconds = seconds
    check.status = "passed" if code == 0 else "failed"
    if code != 0:
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
        check.result = f"exit {code}: {last[0][:120]} (log: {log})"
    return check


def cuda_tests(python: str, logs: Path, timeout: float, cuda: bool) -> Check:
    log = logs / "cuda-tests.log"
    code, output, seconds = run_command(
        [python, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"], log, timeout
    )
    check = finish(Check("cuda-tests"), code, output, seconds, log)
    summary = re.findall(r"(\d+ (?:passed|failed|skipped|error)s?)", output)
    if check.status == "passed":
        check.result = ", ".join(summary) or "no tests ran"
        # On a GPU every test must run: all skipped means CUDA was not usable to them.
        if cuda and not re.search(r"[1-9]\d* passed", output):
            check.status = "failed"
    return check


def train_speed(python: str, logs: Path, timeout: float, cuda: bool, steps: int) -> Check:
    log = logs / "train.log"
    command = [python, "benchmarks/bench_train_step.py", "--size", "256", "--rounds", "2"]
    command += ["--feeds", "device", "cache", "--steps", str(steps), "--warmup", "5"]
    command += ["--models", *(TRAIN_MODELS if cuda else ("seresnet_small",))]
    if not cuda:
        command += ["--device", "cpu", "--batch-size", "4", "--n", "16"]
    code, output, seconds = run_command(command, log, timeout)
    check = finish(Check("train"), code, output, seconds, log)
    check.tables = markdown_tables(output)
    if check.status == "passed":
        shares = re.findall(r"^\|\s*(\S+)\s*\|\s*cache\s*\|.*\|\s*([\d.]+)\s*\|\s*$", output, re.M)
        check.result = "cache feed % of ceiling: " + (
            ", ".join(f"{model} {share}" for model, share in shares) or "see table"
        )
    return check


def inference_speed(python: str, logs: Path, timeout: float, cuda: bool) -> Check:
    log = logs / "inference.log"
    command = [python, "benchmarks/bench_inference.py", "--skip-baseline", "--skip-accuracy"]
    command += ["--device", "cuda"] if cuda else ["--device", "cpu", "--n", "32"]
    code, output, seconds = run_command(command, log, timeout)
    check = finish(Check("inference"), code, output, seconds, log)
    check.tables = markdown_tables(output)
    fastest = re.search(r"fastest predict: ([\d.]+) s", output)
    if check.status == "passed":
        check.result = f"fastest predict_images: {fastest.group(1)} s" if fastest else "see table"
    return check


def ddp_step(python: str, logs: Path, timeout: float, gpus: int) -> Check:
    if gpus < 2:
        return Check("ddp", result=f"needs 2 GPUs, found {gpus}")
    work = Path(tempfile.mkdtemp(prefix="chexvision-gpu-check-ddp-"))
    cli = [python, "-m", "chexvision_lib.cli"]
    started = time.perf_counter()
    log = logs / "ddp.log"
    for command in (
        [*cli, "synth", str(work / "data"), "--patients", "60", "--size", "128"],
        [*cli, "prepare", str(work / "data"), "--out", str(work / "cache"), "--size", "64"],
    ):
        code, output, _ = run_command(command, log, timeout)
        if code != 0:
            return finish(Check("ddp"), code, output, time.perf_counter() - started, log)
    command = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "chexvision_lib.cli", "train", "--cache", str(work / "cache")]
    command += ["--out", str(work / "run"), "--model", "seresnet_small", "--epochs", "1"]
    code, output, _ = run_command(command, log, timeout)
    check = finish(Check("ddp"), code, output, time.perf_counter() - started, log)
    if check.status == "passed":
        check.result = "1 epoch on 2 GPUs (torchrun, NCCL)"
    shutil.rmtree(work, ignore_errors=True)
    return check


def demo(python: str, logs: Path, timeout: float) -> Check:
    log = logs / "demo.log"
    out = Path(tempfile.mkdtemp(prefix="chexvision-gpu-check-demo-"))
    command = [python, "-m", "chexvision_lib.cli", "demo", "--out", str(out)]
    code, output, seconds = run_command(command, log, timeout)
    check = finish(Check("demo"), code, output, seconds, log)
    auc = re.search(r"macro AUC[^\n]*", output)
    if check.status == "passed":
        check.result = auc.group(0)[:120] if auc else "finished"
    shutil.rmtree(out, ignore_errors=True)
    return check


def machine_line() -> str:
    import torch

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        gpu = f"{torch.cuda.device_count()} x {', '.join(names)}, CUDA {torch.version.cuda}"
    else:
        gpu = "no CUDA device"
    return f"{gpu}; torch {torch.__version__}; Python {platform.python_version()}"


def report(checks: list[Check], started: float) -> str:
    lines = [
        f"## GPU check, {time.strftime('%Y-%m-%d')}: {machine_line()}",
        "",
        "| check | status | result | seconds |",
        "|---|---|---|---|",
    ]
    for check in checks:
        lines.append(f"| {check.name} | {check.status} | {check.result} | {check.seconds:.0f} |")
    lines.append(f"\nTotal {time.perf_counter() - started:.0f} s.")
    for check in checks:
        for table in check.tables:
            lines += ["", f"**{check.name}**", "", table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="Markdown file")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="checks")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument(
        "--timeout", type=float, default=150, help="seconds per check before it is killed"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run without a GPU (CUDA-only checks skipped)"
    )
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA device here (pass --allow-cpu to try the script on a CPU)")
        return 2
    started = time.perf_counter()
    python, gpus = sys.executable, torch.cuda.device_count()
    logs = args.out.parent / f"{args.out.stem}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    runners = {
        "cuda-tests": lambda: cuda_tests(python, logs, args.timeout, cuda),
        "train": lambda: train_speed(python, logs, args.timeout, cuda, args.steps),
        "inference": lambda: inference_speed(python, logs, args.timeout, cuda),
        "ddp": lambda: ddp_step(python, logs, args.timeout, gpus),
        "demo": lambda: demo(python, logs, args.timeout),
    }
    checks = []
    for name in args.only:
        print(f"gpu_check: {name} ...", flush=True)
        checks.append(runners[name]())
        print(f"  {checks[-1].status} {checks[-1].result}", flush=True)
    text = report(checks, started)
    args.out.write_text(text)
    print(text)
    return 1 if any(check.status == "failed" for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
