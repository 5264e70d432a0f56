"""Command-line helpers shared by the stage modules."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import S2CError


def parse_json_arg(text: str, flag: str) -> dict:
    """Parse a JSON object given on the command line (or '@file.json'); S2CError naming the flag."""
    try:
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        val = json.loads(text)
    except (json.JSONDecodeError, OSError) as e:
        raise S2CError(f"{flag}: not valid JSON ({e}); pass a JSON object, e.g. {flag} '{{}}'") from None
    if not isinstance(val, dict):
        raise S2CError(f"{flag}: expected a JSON object, got {type(val).__name__}")
    return val
