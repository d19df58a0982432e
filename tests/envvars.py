"""Set environment variables for a block of tests (module-scoped fixtures can't use monkeypatch), and find
the files tests take from the environment."""

import contextlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_weights_path() -> Path:
    """The ImageNet MobileNet weights file: $PATTLITE_TEST_WEIGHTS, else ../shared/weights/ beside the clone
    (absent on a user's fresh clone: the tests that need it skip, saying so)."""
    path = os.environ.get("PATTLITE_TEST_WEIGHTS") or (
        REPO_ROOT.parent / "shared" / "weights" / "mobilenet_1_0_224_imagenet_no_top.weights.h5"
    )
    return Path(path)


@contextlib.contextmanager
def environment(**values):
    """Set the given variables (str() of each value) and restore the previous ones on exit."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: str(value) for name, value in values.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
