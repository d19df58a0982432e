"""`pattlite.console.quiet_backend_logs` drops TensorFlow's start-up lines from stderr, keeps the rest."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    from pattlite.console import quiet_backend_logs
    quiet_backend_logs()
    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
             "I0000 00:00:1795815073.892225    1148 port.cc:153] oneDNN custom operations are on.\\n"
             "E0000 00:00:1795815077.455078    1148 cuda_platform.cc:52] failed call to cuInit\\n")
    os.write(2, noise.encode() + b"a real warning stays\\n")
    import logging
    logging.getLogger("tensorflow").warning("5 out of the last 12 calls triggered tf.function retracing")
    import time; time.sleep(0.3)  # let the filter thread forward before exit
""")


def test_start_up_noise_is_filtered_and_other_lines_pass():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "a real warning stays" in out.stderr
    assert "oneDNN" not in out.stderr and "cuInit" not in out.stderr and "absl" not in out.stderr
    assert "retracing" not in out.stderr
