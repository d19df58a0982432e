"""`pattlite.console.quiet_backend_logs` drops TensorFlow's start-up lines from stderr, keeps the rest, and
loses nothing written just before the process ends, however it ends."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    from pattlite.console import quiet_backend_logs
    quiet_backend_logs()
    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
             "I0000 00:00:1795815073.892225    1148 port.cc:153] oneDNN custom operations are on.\\n"
             "E0000 00:00:1795815077.455078    1148 cuda_platform.cc:52] failed call to cuInit\\n"
             "E0000 00:00:1795872113.185759   13488 util.cc:131] oneDNN supports DT_HALF only on platforms "
             "with AVX-512. Falling back to the default Eigen-based implementation if present.\\n")
    os.write(2, noise.encode() + b"a real warning stays\\n")
    import logging
    logging.getLogger("tensorflow").warning("5 out of the last 12 calls triggered tf.function retracing")
    os.write(2, b"[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\\n")
    os.write(2, b"progress 1/2\\rprogress 2/2\\r")
    print("last words", file=__import__("sys").stderr)  # right before exit: must not be lost
""")

ENDINGS = {
    "exception": "raise SystemExit('ended by SystemExit')",
    "os._exit": "import sys; sys.stderr.flush(); os._exit(3)",  # no atexit handlers run
    "SIGKILL": "import signal, sys; sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)",
}


def test_start_up_noise_is_filtered_and_other_lines_pass():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    out.stderr = out.stderr.decode()  # not text=True: that would turn "\r" into "\n"
    assert out.returncode == 0, out.stderr
    assert "a real warning stays" in out.stderr
    assert "oneDNN" not in out.stderr and "cuInit" not in out.stderr and "absl" not in out.stderr
    assert "DT_HALF" not in out.stderr
    assert "retracing" not in out.stderr and "KeyboardInterrupt" not in out.stderr
    assert "progress 1/2\rprogress 2/2\r" in out.stderr  # carriage-return lines pass as they come
    assert out.stderr.rstrip().endswith("last words")


def test_output_written_right_before_any_kind_of_exit_arrives():
    for name, ending in ENDINGS.items():
        script = (
            "import os\nfrom pattlite.console import quiet_backend_logs\nquiet_backend_logs()\n"
            f"print('written by {name}', file=__import__('sys').stderr)\n{ending}\n"
        )
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
            assert out.returncode != 0 and f"written by {name}" in out.stderr, (name, out.stderr)


def test_data_warning_printer_prints_each_data_warning_once(capsys):
    import warnings

    from pattlite.console import data_warning_printer
    from pattlite.data.errors import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what a grid sees: every experiment reads the data again
        others = []
        warnings.showwarning = lambda message, *rest: others.append(str(message))  # "as usual"
        warnings.showwarning = data_warning_printer("run_all.sh")
        for _ in range(3):
            warnings.warn("/data/fer2013.csv: line 641 repeats line 19", DataWarning)
        warnings.warn("/data/fer2013new.csv: line 9 repeats line 2", DataWarning)
        warnings.warn("not about data", UserWarning)
    err = capsys.readouterr().err
    assert err.count("run_all.sh: warning: /data/fer2013.csv: line 641 repeats line 19\n") == 1
    assert "run_all.sh: warning: /data/fer2013new.csv: line 9 repeats line 2\n" in err
    assert others == ["not about data"] and "not about data" not in err
