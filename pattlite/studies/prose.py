"""The report's fixed prose, read from `pattlite/resources/report/` (Markdown files and captions.json).

Text lives there, not in Python strings, so that it can be edited as text; `{name}` placeholders are
filled with `str.format`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


def _folder():
    return resources.files("pattlite") / "resources" / "report"


def text(name: str, **fields) -> str:
    """The Markdown of `resources/report/<name>.md`, stripped, with `fields` filled in."""
    source = _folder() / f"{name}.md"
    if not source.is_file():
        raise ValueError(f"no report text {name!r}: expected the file {source}")
    body = source.read_text(encoding="utf-8").strip()
    return body.format(**fields) if fields else body


@functools.lru_cache(maxsize=None)
def _captions() -> dict:
    return json.loads((_folder() / "captions.json").read_text(encoding="utf-8"))


def caption(name: str) -> str:
    """A caption of `resources/report/captions.json` ("audit", "figure6", "figure7")."""
    captions = _captions()
    if name not in captions:
        raise ValueError(f"no caption {name!r} in resources/report/captions.json; it has {', '.join(captions)}")
    return captions[name]
