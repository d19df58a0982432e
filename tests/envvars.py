"""Set environment variables for a block of tests (module-scoped fixtures can't use monkeypatch)."""

import contextlib
import os


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
