"""One error type for bad input, and the CLI wrapper that turns it into a one-line message.

Every stage module raises :class:`S2CError` for problems a user can fix (missing file, corrupt
image, wrong config, mismatched cache). ``cli_main`` prints ``s2c: error: <message>`` and exits 2,
so Snakemake logs show one clear line instead of a traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class S2CError(Exception):
    """A user-fixable problem. The message names the file/key and the fix."""


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a stage's ``main(argv=None)``: S2CError → one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except S2CError as e:
            print(f"s2c: error: {e}", file=sys.stderr)
            raise SystemExit(2)
        return 0 if rc is None else rc

    return wrapper
