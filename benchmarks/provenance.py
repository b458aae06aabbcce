"""Where a benchmark's figures come from: the machine and the commit, in plain words."""

import platform
import subprocess
import sys
from pathlib import Path

import torch


def machine():
    """The machine and commit these figures come from, in plain words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__,
            "python": sys.version.split()[0], "commit": commit or "unknown"}
