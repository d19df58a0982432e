"""Keep TensorFlow's start-up noise out of terminals and notebooks, without turning anything off or
losing any other output.

TensorFlow 2.21 prints its oneDNN notice and CUDA probing lines from C++ before its logging is
initialised, so TF_CPP_MIN_LOG_LEVEL does not stop them, and Jupyter kernels copy them into notebook
outputs. `quiet_backend_logs()` filters those lines out of the process's stderr (file descriptor 2, so
it also works for output written by C++ and by child processes) and silences the Python-side
"tf.function retracing" warnings (evaluating test subsets of different sizes traces once per shape,
which is expected). oneDNN stays on: disabling it halves CPU speed.

Design (why nothing written to stderr can be lost): the filter is a small child process, not a thread.
It holds the original stderr and reads a pipe that becomes this process's file descriptor 2; it exits
only at end-of-file, i.e. once every writer (this process and any child that inherited fd 2) has closed
the pipe. At normal exit an `atexit` handler flushes `sys.stderr`, puts the original stderr back on fd 2
(which closes this process's end of the pipe) and waits for the filter to forward the rest. Even when
this process dies without running `atexit` (SIGKILL, `os._exit`), the kernel closes the pipe and the
filter still forwards everything that was written. The filter ignores SIGINT and SIGTERM, so a Ctrl-C
in a terminal, or a SIGTERM to the whole process group (systemd, Slurm's scancel), cannot kill it
before it has forwarded what the stopped process says last ("interrupted ..."); without it that
process's last writes to stderr would fail. It still ends with the last writer (end-of-file).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import subprocess
import sys

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas"
    r"|computation_placer|gpu_device|cpu_feature_guard)\.cc:\d+\].*"
    r"|\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption.*"
    # jupyter_client interrupts (SIGINT) every kernel before asking it to shut down
    # (KernelManager._async_shutdown_kernel); a kernel that is inside a message handler at that moment
    # logs this line. It follows every notebook papermill finishes, so it says nothing about the run.
    r"|\[IPKernelApp\] ERROR \| KeyboardInterrupt caught in kernel\.?"
    # float16 cached features are widened inside the compiled call; on CPUs without AVX-512 oneDNN says
    # once that Eigen runs that cast (measured faster than casting in NumPy), which needs no action.
    r"|[IWE]\d{4} [\d:. ]+\d+ util\.cc:\d+\] oneDNN supports DT_HALF only on platforms with AVX-512\..*"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow.*)$"
)

# The filter process: reads fd 0 (the pipe), writes what is not noise to fd 2 (the original stderr).
# Lines end at "\n" or "\r" (progress bars redraw with "\r"), so output is forwarded as it comes; an
# unterminated tail is forwarded at end-of-file.
_FILTER_SOURCE = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
line_end = re.compile(rb"(?<=[\r\n])")
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    *lines, pending = line_end.split(pending + chunk)
    kept = b"".join(line for line in lines if not noise.match(line.rstrip(b"\r\n")))
    while kept:
        kept = kept[os.write(2, kept):]
if pending and not noise.match(pending):
    os.write(2, pending)
"""

EXIT_WAIT_S = 10.0  # at exit, how long to wait for the filter when a child process still holds the pipe
_state: dict = {}


def _restore_stderr() -> None:
    """atexit: hand fd 2 back to the original stderr and let the filter forward what is left."""
    process, original = _state.pop("process", None), _state.pop("original", None)
    if process is None:
        return
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os.dup2(original, 2)  # closes this process's write end of the pipe; later writes go straight out
    os.close(original)
    try:
        process.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        pass  # a child of ours still holds the pipe; the filter keeps forwarding until it closes it


def data_warning_printer(prefix: str):
    """A `warnings.showwarning` for the console: each data warning once, as one `<prefix>: warning: ...`
    line (its message names the file and line; the code location would say nothing); other warnings
    as usual. A grid reads the same dataset for every experiment, so a message already printed is
    not printed again."""
    import warnings

    usual = warnings.showwarning
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        from pattlite.data.errors import DataWarning  # here: importing pattlite.data costs 0.4 s

        if not issubclass(category, DataWarning):
            usual(message, category, filename, lineno, file, line)
        elif str(message) not in shown:
            shown.add(str(message))
            print(f"{prefix}: warning: {message}", file=sys.stderr, flush=True)

    return show


def quiet_backend_logs() -> None:
    """Filter TensorFlow's start-up lines from stderr and its retracing warnings; idempotent.

    Call it before TensorFlow is imported (the notebooks' first cell, the CLI's entry point).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if _state.get("installed"):
        return
    _state["installed"] = True
    if not sys.executable:  # an embedded interpreter without a Python to start: nothing to filter with
        return
    try:
        for stream in (sys.stderr, sys.__stderr__):
            if stream is not None:
                stream.flush()
        process = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _FILTER_SOURCE, NOISE.pattern],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
    except (OSError, ValueError):  # no usable file descriptor 2, or no way to start a process
        return
    original = os.dup(2)
    os.dup2(process.stdin.fileno(), 2)
    process.stdin.close()  # fd 2 is now this process's only write end of the pipe
    _state.update(process=process, original=original)
    atexit.register(_restore_stderr)
