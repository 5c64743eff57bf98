"""benchmarks/gpu_check.py: the orchestration and the table, tried on the CPU (CUDA checks skip)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def test_markdown_tables_are_cut_from_output():
    output = "start\n| a | b |\n|---|---|\n| 1 | 2 |\nmiddle\n| c |\n|---|\nend"
    assert gpu_check.markdown_tables(output) == ["| a | b |\n|---|---|\n| 1 | 2 |", "| c |\n|---|"]


def test_refuses_without_cuda_unless_allowed(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "x.md")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device" in done.stdout
    assert not (tmp_path / "x.md").exists()


def test_cpu_run_writes_the_table_with_skips(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--allow-cpu", "--only", "cuda-tests", "ddp"]
        + ["--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert "| check | status | result | seconds |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "skipped" in rows["cuda-tests"]  # test_cuda.py skips every test without a GPU
    assert "needs 2 GPUs, found 0" in rows["ddp"]
    assert (tmp_path / "gpu_check_logs" / "cuda-tests.log").read_text().startswith("$ ")


def test_a_failing_check_fails_the_script(tmp_path, monkeypatch):
    log = tmp_path / "x.log"
    code, output, _ = gpu_check.run_command([sys.executable, "-c", "raise SystemExit(3)"], log, 30)
    check = gpu_check.finish(gpu_check.Check("x"), code, output, 1.0, log)
    assert check.status == "failed" and check.result.startswith("exit 3")
    code, output, _ = gpu_check.run_command(
        [sys.executable, "-c", "import time; time.sleep(5)"], log, 0.5
    )
    assert code == 124 and "killed after" in output
    # A timeout kills the whole process group: a grandchild does not outlive it.
    marker = tmp_path / "grandchild-alive"
    grandchild = f"import time; time.sleep(2); open({str(marker)!r}, 'w').close()"
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        "time.sleep(30)\n"
    )
    code, _, _ = gpu_check.run_command([sys.executable, str(parent)], log, 1.0)
    time.sleep(2.5)
    assert code == 124 and not marker.exists()
