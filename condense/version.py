"""What a result is traced to: the package version, and the environment a run records."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

__version__ = "0.8.0"


def environment() -> dict[str, Any]:
    """Versions and git hash: what a run folder records (``env.json``) so a number can be traced."""
    import torch  # here, so reading the version (setup.cfg, ``condense --version``) needs no torch

    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"condense": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads(), "git": git}
