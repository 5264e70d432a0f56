"""One error type for bad input, and the CLI wrapper that turns it into a one-line message.

Every stage module raises :class:`S2CError` for problems a user can fix (missing file, corrupt
image, wrong config, mismatched cache). ``cli_main`` prints ``s2c: error: <message>`` and exits 2,
so Snakemake logs show one clear line instead of a traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable


class S2CError(Exception):
    """A user-fixable problem. The message names the file/key and the fix."""


_OS_HINTS = {
    errno.EACCES: "fix its permissions or choose a writable path",
    errno.EPERM: "fix its permissions or choose a writable path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another path",
    errno.ENOTDIR: "a parent of this path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way of a folder: remove it or choose another path",
}


def os_error_message(e: OSError) -> str:
    """One line for a file-system failure the user can fix (unwritable output, full disk)."""
    where = e.filename if e.filename is not None else "a file"
    return f"{where}: {e.strerror or e}; {_OS_HINTS.get(e.errno, 'check the path')}"


def one_line(message: str) -> str:
    """The user's message of an S2CError, also when a torch DataLoader worker raised it: PyTorch
    re-raises it in the parent as ``S2CError("Caught S2CError in DataLoader worker ...\nOriginal
    Traceback ...\ns2c.errors.S2CError: <message>")``; only ``<message>`` is for the user."""
    if "\nOriginal Traceback" not in message:
        return message
    tag = f"{S2CError.__module__}.{S2CError.__qualname__}: "
    last = [ln for ln in message.splitlines() if ln.startswith(tag)]
    return last[-1][len(tag):] if last else message.splitlines()[-1]


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a stage's ``main(argv=None)``: S2CError, or an OSError from the file system
    (unwritable output folder, full disk), → one line on stderr naming the path, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except S2CError as e:
            print(f"s2c: error: {one_line(str(e))}", file=sys.stderr)
            raise SystemExit(2)
        except OSError as e:
            if e.errno not in _OS_HINTS:
                raise
            print(f"s2c: error: {os_error_message(e)}", file=sys.stderr)
            raise SystemExit(2)
        return 0 if rc is None else rc

    return wrapper
