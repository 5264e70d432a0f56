"""Command-line helpers shared by the stage modules: the one JSON-argument parser.

Every stage flag that carries a config section (``--cfg``, ``--data-cfg``, ``--sam-cfg``) is read
by :func:`parse_json_arg`, so ``--data-cfg '{"root": ...}'``, ``--data-cfg @data.json`` and
``--data-cfg data.json`` mean the same to every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import S2CError


def parse_json_arg(text: str, flag: str) -> dict:
    """A JSON object given on the command line: the JSON text itself, ``@file.json``, or the path of
    an existing JSON file. S2CError naming the flag when it is none of these or not an object."""
    try:
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        elif not text.lstrip().startswith(("{", "[", '"')) and Path(text).is_file():
            text = Path(text).read_text()
        val = json.loads(text)
    except (json.JSONDecodeError, OSError) as e:
        raise S2CError(f"{flag}: not valid JSON ({e}); pass a JSON object, e.g. {flag} '{{}}', "
                       f"or @file.json") from None
    if not isinstance(val, dict):
        raise S2CError(f"{flag}: expected a JSON object, got {type(val).__name__}")
    return val
