"""Provenance: where a result came from. The code version (git commit, dirty or not), package versions, the
Keras backend and device (`provenance`, stored in every result file, benchmark and report), the same fields
without importing Keras for a run record (`machine`). No hostname.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from pattlite import config


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(config.PROJECT_ROOT), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def accelerators() -> list[str]:
    """Names of the GPUs/TPUs the running Keras backend sees (empty on CPU; `pattlite.backends`)."""
    from pattlite import backends

    return backends.current().accelerators()


def provenance() -> dict:
    """Where a result came from: code version, package versions, Keras backend and device; no hostname.

    Returns:
        {"git_commit": sha or "unknown", "git_dirty": bool or None (unknown), "python", "keras",
        "tensorflow" (None if not installed), "numpy", "pandas", "pattlite", "keras_backend",
        "device" (GPU names, else the CPU model), "platform", "created_utc"}.
    """
    import keras

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    from pattlite import backends

    backend = backends.name()
    gpus = accelerators()
    return {
        "git_commit": commit or "unknown",
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "tensorflow": _version("tensorflow"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pattlite": _version("pattlite") or __import__("pattlite").__version__,
        "keras_backend": backend,
        "device": ", ".join(gpus) if gpus else f"CPU: {_cpu_model()}",
        "platform": f"{platform.system()} {platform.machine()}; {sys.implementation.name}",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def machine() -> dict:
    """`provenance()` without its `keras_backend` (this process's, not the training's: the entry
    says which ran where). When this process has not imported Keras (the training ran in notebook
    kernels, or the run stopped before it), the same fields from package metadata, `nvidia-smi` and
    the CPU model instead: importing Keras for them would take seconds, and a run stopped by SIGTERM
    must be recorded within the grace its supervisor gives (`docker stop`: 10 s)."""
    if "keras" in sys.modules:
        machine = provenance()
        machine.pop("keras_backend")
        return machine
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        gpus = [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        gpus = []
    return {
        "git_commit": commit or "unknown",
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("keras", "tensorflow", "numpy", "pandas", "pattlite")},
        "device": ", ".join(gpus) if gpus else f"CPU: {_cpu_model()}",
        "platform": f"{platform.system()} {platform.machine()}; {sys.implementation.name}",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }
