"""One-line errors for bad input, and the exit-status convention of every command.

A researcher who points a command at the wrong folder should read one sentence that says what
is wrong and how to fix it, not a traceback. Code raises `UserError` for such cases; `run_cli`
turns it into that sentence. Status 2 means the command was used wrongly (bad arguments,
malformed input files), 1 means it failed while running.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable


class UserError(Exception):
    """Bad input the user can fix; the message is shown alone, on one line."""

    exit_code = 2


class RunError(UserError):
    """A runtime failure with a clear cause (disk full, corrupt checkpoint)."""

    exit_code = 1


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main`, mapping UserError to one line on stderr and its exit status.

    `--debug` anywhere in argv shows the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return int(main(argv) or 0)
    except UserError as err:
        if debug:
            traceback.print_exc()
        prog = sys.argv[0].rsplit("/", 1)[-1] or "command"
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
