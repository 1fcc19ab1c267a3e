"""A live progress line for a command whose output goes to a log file (the demo's stages).

    with Progress(log_path, every=30) as progress:      # every: seconds between lines off a TTY
        while proc.poll() is None:
            progress.show()                              # the newest bar / line of the log
            time.sleep(1)

The line is made from the log itself: the newest tqdm bar (`desc: N/M`, its loss when the bar
shows one) or else the newest log line, and the time elapsed. On a terminal it is redrawn in
place every call; elsewhere (CI logs, pipes) it is printed as a new line every `every` seconds.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

# tqdm as it writes to a file: "desc:  37%|███▋      | 148/400 [01:30<03:01, 4.54s/step, loss=1.0687]"
BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s*)?\d+%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]\r\n]*)\]")
LOSS = re.compile(r"\bloss=(?P<loss>[-+0-9.eE]+)")
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ [\w.]+: ")  # logging's asctime levelname name
TAIL_BYTES = 16384


def status(text: str) -> str:
    """What the end of a log says about progress: 'desc N/M (P %), loss L' for the newest bar,
    else its newest non-empty line without the logging prefix ('' for an empty log)."""
    bars = list(BAR.finditer(text))
    if bars:
        bar = bars[-1]
        n, total = int(bar["n"]), int(bar["total"])
        what = (bar["desc"] or "").strip() or "step"
        line = f"{what} {n}/{total} ({100 * n // max(total, 1)} %)"
        loss = LOSS.search(bar["info"])
        return line + (f", loss {float(loss['loss']):.4g}" if loss else "")
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return LOG_PREFIX.sub("", lines[-1]) if lines else ""


def duration(seconds: float) -> str:
    """'45 s', '12 min 03 s', '1 h 02 min'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """The progress line of one running command, read from its log file `path`."""

    def __init__(self, path: str | Path, every: float = 30.0, stream=None, indent: str = "    "):
        self.path, self.every, self.indent = Path(path), every, indent
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.last_printed = self.started
        self.drawn = False

    def line(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        now = status(text)
        return f"{self.indent}{now + ' · ' if now else ''}{duration(time.monotonic() - self.started)}"

    def show(self) -> None:
        """Redraw the line (terminal), or print it when `every` seconds have passed (other)."""
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\033[K" + self.line()[:width])
            self.drawn = True
        elif time.monotonic() - self.last_printed >= self.every:
            self.stream.write(self.line() + "\n")
            self.last_printed = time.monotonic()
        self.stream.flush()

    def clear(self) -> None:
        """Remove the in-place line (before the next line is printed)."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()
