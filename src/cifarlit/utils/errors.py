"""The one exception type for user mistakes, and how every command shows one: a sentence, without a traceback."""

from __future__ import annotations

import sys

USER_ERROR = 2  # the exit status of a user mistake, as argparse's own


class CifarlitError(ValueError):
    """A bad option value or bad data; the message names the option or file, the value and what would be valid."""


def report(err: CifarlitError) -> int:
    """Print ``err`` as the one line a user sees (``error: ...`` on stderr); returns the exit status for it."""
    print(f"error: {err}", file=sys.stderr)
    return USER_ERROR
