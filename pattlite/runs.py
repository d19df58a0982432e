"""What every long command shares (./run_all.sh, `pattlite grid run`, `pattlite train`): one run per results
folder, interruptions, the run record.

- `results_lock`: a run holds `<results_dir>/.lock`; a second run on the same folder is refused,
  naming the process that holds it (a lock of a dead process never blocks: the system drops it).
- `handle_signals`, `interruption`, `RunInterrupted`: Ctrl-C (SIGINT) and `kill` (SIGTERM) stop a run
  at any stage; whatever error the interruption turns into on its way up, the run is recorded in
  `<results_dir>/run_record.json` (`record_run`) as interrupted, with where, and ends with status 130 / 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pattlite.files import exclusive_lock, write_json_atomic
from pattlite.provenance import machine

RUN_RECORD = "run_record.json"
LOCK_FILE = ".lock"


# ---------------------------------------------------------------------------------------------------
# Interruptions: SIGINT and SIGTERM end a run, recorded with where


SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How a child process ended by a signal reports it: -N from Python's subprocess, 128+N from a shell.
_SIGNAL_STATUSES = {**{-s: s.name for s in SIGNALS}, **{128 + s: s.name for s in SIGNALS}}
_received: list = []
_deferred = {"on": False}


def exit_status(signal_name: str) -> int:
    """130 for SIGINT, 143 for SIGTERM: the shell's status of a process ended by that signal."""
    return 128 + int(signal.Signals[signal_name])


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM (`kill`), and where: the stage ("start", "grid",
    "notebooks") and, when known, the experiment being trained or the notebook and cell being run.
    A KeyboardInterrupt, so that code catching `Exception` lets it through."""

    def __init__(self, signal_name: str, stage: str, **where):
        super().__init__(f"{signal_name} during {stage}")
        self.signal_name, self.stage = signal_name, stage
        self.where = {k: v for k, v in where.items() if v is not None}

    @property
    def status(self) -> int:
        return exit_status(self.signal_name)

    def describe(self) -> str:
        """E.g. "during the grid, training ferplus published seed 0 (key 1a2b...) (SIGTERM)"."""
        w = self.where
        if "notebook" in w:
            text = f"in notebook {w['notebook']}" + (f", {w['cell']}" if "cell" in w else "")
        else:
            text = {
                "grid": "during the grid",
                "notebooks": "during the notebooks",
                "start": "before the grid or a notebook started",
            }.get(self.stage, f"during {self.stage}")
        if "experiment" in w:
            text += f", training {w['experiment']}" + (f" (key {w['key']})" if "key" in w else "")
        elif w.get("in_flight"):
            text += f", {len(w['in_flight'])} experiment(s) in flight: {', '.join(w['in_flight'][:5])}" + (
                ", ..." if len(w["in_flight"]) > 5 else ""
            )
        elif "step" in w:
            text += f", {w['step']}"
        return f"{text} ({self.signal_name})"

    def record(self) -> dict:
        return {"signal": self.signal_name, "stage": self.stage, **self.where}


def _on_signal(signum, frame):
    _received.append(signal.Signals(signum).name)
    if not _deferred["on"]:
        raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def handle_signals():
    """While inside: SIGINT and SIGTERM raise KeyboardInterrupt in this process (SIGTERM's default
    would end it on the spot, recording nothing), and the first one is remembered (`received_signal`),
    so that whatever error the interruption becomes on its way up (a library may wrap it, a child
    process may die of it) the run is recorded as interrupted. Nested uses share the outer one."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _on_signal:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()  # outside, errors are judged by their own chain again


@contextlib.contextmanager
def deferred_signals():
    """While inside (writing the run record), SIGINT and SIGTERM are only remembered."""
    before = _deferred["on"]
    _deferred["on"] = True
    try:
        yield
    finally:
        _deferred["on"] = before


def received_signal() -> str | None:
    """The first SIGINT / SIGTERM received under `handle_signals` ("SIGINT", "SIGTERM"), else None."""
    return _received[0] if _received else None


def interruption(error: BaseException | None) -> str | None:
    """The signal ("SIGINT" or "SIGTERM") behind `error`, or None when it is a failure of its own.

    An error is an interruption when this process received SIGINT or SIGTERM under `handle_signals`,
    or when its chain of causes and contexts holds a KeyboardInterrupt, a child process ended by
    SIGINT or SIGTERM (an exception whose `returncode` is -2/-15/130/143, e.g. CalledProcessError), a
    notebook kernel's KeyboardInterrupt (papermill's `ename`) or a Ray task's `cause` that is one.
    """
    if received_signal():
        return received_signal()
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RunInterrupted):
            return e.signal_name
        if isinstance(e, KeyboardInterrupt):
            return str(e) if str(e) in ("SIGINT", "SIGTERM") else "SIGINT"
        status = getattr(e, "returncode", None)
        if isinstance(status, int) and not isinstance(status, bool) and status in _SIGNAL_STATUSES:
            return _SIGNAL_STATUSES[status]
        if getattr(e, "ename", None) == "KeyboardInterrupt":
            return "SIGINT"
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError: the task's own exception
        stack += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    return None


def as_interruption(error: BaseException, stage: str, **where) -> RunInterrupted | None:
    """`error` as a `RunInterrupted` at `stage` (an existing one is kept: it knows more), or None."""
    if isinstance(error, RunInterrupted):
        return error
    name = interruption(error)
    return None if name is None else RunInterrupted(name, stage, **where)


# ---------------------------------------------------------------------------------------------------
# One run per results folder


class ResultsFolderBusy(RuntimeError):
    """Another process holds the results folder's lock."""


@contextlib.contextmanager
def results_lock(results_dir, command: str):
    """Hold `<results_dir>/.lock` (an exclusive `flock`) while inside; the file says who holds it.

    The system drops the lock when its process ends, however it ends, so a lock left by a killed run
    never blocks the next one. The file itself stays (removing it would race with a starting run).

    Raises:
        ResultsFolderBusy: another process holds it; the message names the folder, the PID and the
            command holding it.
    """
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE

    def refuse():
        raise ResultsFolderBusy(
            f"results folder {folder} is in use by another run ({_lock_holder(path)}; lock file {path}); "
            "wait for it to end or stop it, or give this run another folder (-p results_dir=DIR, or "
            "--results for pattlite train)"
        )

    with exclusive_lock(path, on_busy=refuse) as fd:
        os.ftruncate(fd, 0)
        os.write(
            fd,
            (
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "command": command,
                        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
                + "\n"
            ).encode(),
        )
        yield path


def _lock_holder(path: Path) -> str:
    for _ in range(20):  # the holder writes its PID right after taking the lock
        try:
            holder = json.loads(path.read_text())
            return f"PID {holder['pid']}: {holder['command']}, started {holder['started_utc']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "PID not recorded in the lock file"


# ---------------------------------------------------------------------------------------------------
# The run record


def record_run(results_dir, entry: dict) -> Path:
    """Append one run (`./run_all.sh` or `pattlite grid run`: command, profile, start, seconds, the
    grid's and each notebook's time, status and, when it did not finish, why or where it stopped;
    machine, versions, commit) to `<results_dir>/run_record.json`. A resumed run appends another
    entry, so the record's total is the time the whole result set took."""
    path = Path(results_dir) / RUN_RECORD
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs.append({**entry, "machine": {"cpu_count": os.cpu_count(), **machine()}})
    write_json_atomic(path, {"runs": runs, "total_seconds": round(sum(r["seconds"] for r in runs), 1)})
    return path


def outcome_fields(failed: str | None, interrupted: RunInterrupted | None) -> dict:
    """The record's status fields: "finished", or "failed" (with the first line of the error) or
    "interrupted" (with `RunInterrupted.record`: signal, stage, experiment or notebook)."""
    if interrupted is not None:
        return {"status": "interrupted", "interrupted": interrupted.record()}
    if failed is not None:
        return {"status": "failed", "failed": failed}
    return {"status": "finished"}


def say_interrupted(command: str, stopped: RunInterrupted) -> None:
    print(
        f"{command}: interrupted {stopped.describe()}; the same command resumes it (finished experiments are kept)",
        file=sys.stderr,
        flush=True,
    )
