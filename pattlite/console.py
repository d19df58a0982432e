"""Keep TensorFlow's start-up noise out of terminals and notebooks, without turning anything off.

TensorFlow 2.21 prints its oneDNN notice and CUDA probing lines from C++ before its logging is
initialised, so TF_CPP_MIN_LOG_LEVEL does not stop them, and Jupyter kernels copy them into notebook
outputs. `quiet_backend_logs()` filters those lines out of the process's stderr (file descriptor 2, so
it also works for output written by C++ and by child processes) and silences the Python-side
"tf.function retracing" warnings (evaluating test subsets of different sizes traces once per shape,
which is expected). oneDNN stays on: disabling it halves CPU speed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas"
    r"|computation_placer|gpu_device|cpu_feature_guard)\.cc:\d+\].*"
    r"|\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption.*"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow.*)$"
)

_installed = False


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line for line in lines if not NOISE.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(write_fd, b"\n".join(kept) + b"\n")
        if pending:
            os.write(write_fd, pending)


def quiet_backend_logs() -> None:
    """Filter TensorFlow's start-up lines from stderr and its retracing warnings; idempotent.

    Call it before TensorFlow is imported (the notebooks' first cell, the CLI's entry point).
    """
    global _installed
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if _installed:
        return
    _installed = True
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:  # no usable file descriptor 2 (some embedded interpreters): nothing to filter
        return
    threading.Thread(target=_pump, args=(read_fd, original), name="pattlite-stderr-filter",
                     daemon=True).start()
