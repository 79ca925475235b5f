"""argparse value types that range-check what the user gave, and a parser whose usage errors
are one line. Light: argparse and math only.

A failed check is reported by argparse as "tf-gru4rec train: error: argument --k: expected an
integer >= 1, received '0'" (exit code 2).
"""

from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def integer(low: int | None = None, high: int | None = None):
    """An int in [low, high] (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {_range(low, high)}, "
                                             f"received {text!r}")
        return value

    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False):
    """A finite float in [low, high] (or (low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        bad = not math.isfinite(value) or (low is not None and (
            value < low or (low_open and value == low))) or (high is not None and value > high)
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected a number {_range(low, high, low_open)}, received {text!r}")
        return value

    return parse


def instant(text: str) -> float:
    """A point in time as unix seconds: an ISO 8601 date or date-time (UTC unless it names
    its zone), or a number of unix seconds."""
    import datetime

    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an ISO 8601 date-time (e.g. 2018-11-08T12:00) or unix seconds, "
                f"received {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite time, received {text!r}")
    return value


def verbosity(text: str):
    """Keras verbosity: auto, 0, 1 or 2."""
    if text == "auto":
        return text
    if text in ("0", "1", "2"):
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, 0, 1 or 2, received {text!r}")


def log_level(text: str) -> str:
    """A logging level name."""
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if text.upper() not in levels:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(levels)}, received "
                                         f"{text!r}")
    return text.upper()


def host_port(text: str) -> str:
    """HOST:PORT with a port in 1..65535."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 1-65535), received {text!r}")
    return text


def name(text: str) -> str:
    """A non-empty name without path separators or whitespace."""
    if not text or any(c.isspace() for c in text) or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"expected a non-empty name without '/' or spaces, "
                                         f"received {text!r}")
    return text


def _range(low, high, low_open=False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def fail(command: str, message: str) -> None:
    """Write the one-line error of `command` to stderr."""
    message = " ".join(str(message).split())  # one line, whatever the message holds
    sys.stderr.write(f"tf-gru4rec {command}: error: {message}\n")
