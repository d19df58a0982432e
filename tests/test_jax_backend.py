"""The tests marked `backends` (backend-specific code, `pattlite.backends`, and the model, evaluation,
training and bench code on JAX: tests/test_backends.py) pass on Keras' JAX backend too.

Runs them in a subprocess (the backend is fixed at import time). Skipped when JAX is not installed: it is
not a dependency (`pip install -e .[jax]` adds it).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX not installed (pip install -e .[jax]); backend check skipped"
)

MARKER = "backends"


def marked_files() -> list[str]:
    """The test files that hold a test marked `backends` (read as text: nothing is imported here)."""
    folder = os.path.dirname(os.path.abspath(__file__))
    return sorted(
        os.path.join("tests", name)
        for name in os.listdir(folder)
        if name.startswith("test_")
        and name.endswith(".py")
        and name != os.path.basename(__file__)
        and f"pytest.mark.{MARKER}" in open(os.path.join(folder, name), encoding="utf-8").read()
    )


def test_backend_specific_tests_pass_on_jax():
    """Every test marked `backends` (tests of backend-specific code: the compiled training loop, the
    predict-function swap of the batch-mixing settings, on-device prediction, the patch layers' JAX
    forms, extraction in a TensorFlow child, the backend seam itself) runs again on JAX."""
    files = marked_files()
    assert "tests/test_backends.py" in files and len(files) >= 5, files
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARKER, *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "deselected" in out.stdout, out.stdout[-2000:]
