"""How long `chexvision` takes to answer `--help`: the parsers import nothing heavy.

Each command is started as a fresh process (as a user's shell starts it) `--repeats` times; the
table gives the best and median wall time, the peak memory of the process and whether torch was
imported. `import torch` alone is the yardstick of what a heavy start costs.

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import common

COMMANDS = {
    "chexvision --help": ["-m", "chexvision_lib.cli", "--help"],
    "chexvision train --help": ["-m", "chexvision_lib.cli", "train", "--help"],
    "chexvision compare --help": ["-m", "chexvision_lib.cli", "compare", "--help"],
    "import chexvision_lib": ["-c", "import chexvision_lib"],
    "import torch (yardstick)": ["-c", "import torch"],
}
# Prints, after the command's own output, whether torch is loaded and the peak RSS in MB. VmHWM,
# not getrusage: ru_maxrss survives exec, so it would report this (torch-loaded) parent's peak.
PROBE = (
    "import atexit, sys\n"
    "def _probe():\n"
    "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    print('\\nPROBE', 'torch' in sys.modules, int(hwm.split()[1]) // 1024, file=sys.stderr)\n"
    "atexit.register(_probe)\n"
)


def run_once(arguments: list[str]) -> tuple[float, bool, int]:
    if arguments[0] == "-m":
        code = PROBE + f"import runpy, sys\nsys.argv = {['chexvision', *arguments[2:]]!r}\n"
        code += f"runpy.run_module({arguments[1]!r}, run_name='__main__')"
    else:
        code = PROBE + arguments[1]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    probe = done.stderr.strip().splitlines()[-1].split()
    return seconds, probe[1] == "True", int(probe[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="fresh processes per command")
    args = parser.parse_args()
    print(common.describe_machine(common.resolve_device("cpu")))
    rows = []
    for name, arguments in COMMANDS.items():
        runs = [run_once(arguments) for _ in range(args.repeats)]
        times = [seconds for seconds, _, _ in runs]
        rows.append(
            {
                "command": name,
                "best s": f"{min(times):.3f}",
                "median s": f"{statistics.median(times):.3f}",
                "peak MB": max(peak for _, _, peak in runs),
                "imports torch": "yes" if runs[0][1] else "no",
            }
        )
    print(common.format_table(rows))


if __name__ == "__main__":
    main()
