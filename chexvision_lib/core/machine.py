"""What this machine lends the process: its share of CPU cores."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows lack it
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
