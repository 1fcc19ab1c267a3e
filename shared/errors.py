"""One-line errors for bad input, and the exit-status convention of every command.

A researcher who points a command at the wrong folder should read one sentence that says what
is wrong and how to fix it, not a traceback. Code raises `UserError` for such cases; `run_cli`
turns it into that sentence. Status 2 means the command was used wrongly (bad arguments,
malformed input files), 1 means it failed while running (`RunError`, a full disk, or any other
exception). `--debug` adds the traceback.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from shared.atomic import write_json

# set by shared.launcher for the processes it starts: the command's name for their lines, and
# a folder where a failed process notes its line, status and time (the launcher reports the
# process that failed first, whose status is the command's)
PROG_ENV = "AFFECT_LINEAGE_PROG"
FAILURES_ENV = "AFFECT_LINEAGE_FAILURES"


class UserError(Exception):
    """Bad input the user can fix; the message is shown alone, on one line."""

    exit_code = 2


class RunError(UserError):
    """A runtime failure with a clear cause (disk full, corrupt checkpoint)."""

    exit_code = 1


# the last line of a formatted traceback: "package.module.SomeError: message"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.*)$")


def one_line(err: BaseException) -> str:
    """The error's message on one line. An exception re-raised from a DataLoader worker carries
    the worker's whole traceback in its message; only the original message is kept."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        found = _EXCEPTION_LINE.match(last.strip())
        text = found.group(1) if found else last
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
            prog: str | None = None) -> int:
    """Run a command's `main`: a UserError becomes one line on stderr and its exit status, any
    other exception one line and status 1. `--debug` anywhere in argv also prints the traceback.
    `prog` names the command in the line (default: the name a launcher gave, else the script's
    file name)."""
    if argv is None and getattr(sys.modules.get("__main__"), "__spec__", None) is not None:
        sys.argv[0] = _script_name(sys.argv[0])  # argparse's usage and errors name `python -m pkg.mod`, not mod.py
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.environ.pop(PROG_ENV, None)  # popped: not the name of a command this one starts
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    _file_size_limit_as_error()
    try:
        return int(main(argv) or 0)
    except UserError as err:
        return _report(err, one_line(err), err.exit_code, debug, prog)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a missing permission: the system's words say it all
        return _report(err, one_line(err), 1, debug, prog)
    except Exception as err:  # noqa: BLE001 - no traceback unless asked for, but the cause on one line
        hint = "" if debug else " (run again with --debug for the traceback)"
        return _report(err, f"{type(err).__name__}: {one_line(err)}{hint}", 1, debug, prog)


def _script_name(argv0: str) -> str:
    """The command as typed: `python -m pkg.mod` sets __main__'s spec (a script's is None), and
    argv[0] names only its file."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return argv0.rstrip("/").rsplit("/", 1)[-1] or "command"


def _report(err: BaseException, message: str, status: int, debug: bool, prog: str | None) -> int:
    if debug:
        traceback.print_exception(err)
    prog = prog or _script_name(sys.argv[0])
    line = f"{prog}: error: {message}"
    print(line, file=sys.stderr, flush=True)
    _note_failure(line, status)
    return status


def _note_failure(line: str, status: int) -> None:
    """For a launcher that started this process (FAILURES_ENV): its line, status and time."""
    folder = os.environ.get(FAILURES_ENV)
    if not folder:
        return
    rank = int(os.environ.get("RANK", "0"))
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_json(Path(folder, f"rank_{rank}.json"), {"rank": rank, "status": status, "line": line,
                                                      "time": time.time()}, fsync=False)
    except OSError:  # a full disk: the launcher falls back on the exit statuses
        pass


def _file_size_limit_as_error() -> None:
    """Past a file-size limit (`ulimit -f`, some cluster quotas) the kernel sends SIGXFSZ, whose
    default action kills the process with a core dump in the middle of a write. Ignored, the
    write fails with EFBIG instead, which the code reports and recovers from like a full disk."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
