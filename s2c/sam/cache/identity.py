"""A cache's identity (model, checkpoint, settings, image list) and which ids each part writes."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from ...errors import S2CError
from .layout import CACHE_VERSION, KINDS


def part_ids(ids: Sequence[str], part: int, parts: int) -> list[str]:
    """The deterministic contiguous slice of ``ids`` that part ``part`` of ``parts`` processes."""
    if parts < 1 or not 0 <= part < parts:
        raise S2CError(f"--part {part} / --parts {parts}: need parts >= 1 and 0 <= part < parts")
    n = len(ids)
    return list(ids[part * n // parts : (part + 1) * n // parts])


def make_identity(
    kind: str, model_type: str, checkpoint_sha256: str, settings: dict, image_list_hash: str
) -> dict:
    """The attribute set that identifies what built a cache (compared key by key by the readers)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "kind": kind,
        "version": CACHE_VERSION,
        "model_type": str(model_type),
        "checkpoint_sha256": str(checkpoint_sha256),
        # JSON round trip: tuples become lists, so a fresh dict compares equal to a stored one.
        "settings": json.loads(json.dumps(settings, sort_keys=True)),
        "image_list_hash": str(image_list_hash),
    }


def _diff(expected: Any, found: Any, prefix: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for k in sorted(set(expected) | set(found)):
            out += _diff(expected.get(k, "<absent>"), found.get(k, "<absent>"), f"{prefix}.{k}")
        return out
    if expected != found:
        return [f"{prefix}: cache has {found!r}, config expects {expected!r}"]
    return []


def check_identity(found: dict, expect: dict | None, where: str | os.PathLike) -> None:
    """Raise S2CError naming the store, the first mismatching key and the fix.

    Only keys present in ``expect`` are compared (``version`` is always checked against the code).
    """
    expect = dict(expect or {})
    expect.setdefault("version", CACHE_VERSION)
    problems = []
    for key, val in expect.items():
        if key == "settings":
            val = json.loads(json.dumps(val, sort_keys=True))
        problems += _diff(val, found.get(key, "<absent>"), key)
    if problems:
        kind = found.get("kind", "?")
        rule = "sam_embed" if kind == "embed" else "sam_everything"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise S2CError(
            f"SAM cache {where} does not match the config: {problems[0]}{more}; "
            f"delete it and rerun the {rule} rules (or point the config at the matching cache)"
        )
