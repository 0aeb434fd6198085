"""What every script shares: logging set-up, user-error handling, exit codes, progress bars."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Callable, Mapping, Sequence

from imgpipe.errors import InfrastructureError, UserError

EXIT_OK = 0
EXIT_FAILURES = 1  # the run finished but some items failed
EXIT_USAGE = 2  # a user mistake: bad option or setting
EXIT_INTERRUPTED = 130

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Characters that act on a terminal or fake a line instead of showing: C0 and C1 controls (ANSI
# escape sequences start with one), bidirectional overrides, zero-width marks. S3 keys may hold any.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_SHOWN = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _SHOWN.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal, a table cell or a log line: every control character (newlines
    too, unless kept), bidi override and zero-width mark is shown as an escape such as \\x1b."""
    text = str(text)
    if keep_newlines:
        return "\n".join(_UNPRINTABLE.sub(_escape, line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(_escape, text)


class PrintableFormatter(logging.Formatter):
    """Log lines whose message cannot fake another line or drive the terminal (a key with a
    newline or an ANSI escape in it); tracebacks keep their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def setup_logging(verbose: bool = False) -> None:
    """Configure logging once, for the program; libraries only get named loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # Wire-level logs of the clients would print request headers (credentials); keep them quiet.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples in the description as written; show defaults that exist."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def parser(prog: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    text = description.strip() + "\n\nexamples:\n" + "\n".join(f"  {e}" for e in examples)
    return argparse.ArgumentParser(prog=prog, description=text, formatter_class=HelpFormatter)


def check_ranges(args: argparse.Namespace, ranges: Mapping[str, tuple[int | None, int | None]]) -> None:
    """One rule for every script's whole-number options: `ranges` maps an argparse dest to its
    (lowest, highest), None for no bound; an option given outside its range is a UserError that
    lists every such option (`--limit must be at least 1, got 0`). Options not given (None) pass."""
    problems = []
    for dest, (low, high) in ranges.items():
        value = getattr(args, dest)
        if value is None or ((low is None or value >= low) and (high is None or value <= high)):
            continue
        if high is not None and low is not None:
            rule = f"between {low} and {high}"
        elif high is not None:
            rule = f"at most {high}"
        else:
            rule = "0 or more" if low == 0 else f"at least {low}"
        problems.append(f"--{dest.replace('_', '-')} must be {rule}, got {value}")
    if problems:
        raise UserError("; ".join(problems))


def run(main: Callable[[], int]) -> int:
    """Run a script's body: user mistakes become one line on stderr and exit 2, Ctrl-C exits 130."""
    try:
        return main()
    except UserError as exc:
        print(f"error: {printable(exc, keep_newlines=True)}", file=sys.stderr)
        return EXIT_USAGE
    except InfrastructureError as exc:
        print(f"error: {printable(exc, keep_newlines=True)}", file=sys.stderr)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def write_summary_json(path, summary: Mapping) -> None:
    """--summary-json: the run's summary as JSON at `path` (its folder made first); nothing when no
    path was given. A path that cannot be written is a UserError that names it and why."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        raise UserError(f"cannot write the summary to {path}: {exc.strerror or exc}") from None


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool | None = None):
    """A tqdm bar when stderr is a terminal, a no-op object otherwise (logs stay clean)."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
