"""The workflow's config schema as the fault table and the config fuzzer walk it."""

from __future__ import annotations

import yaml

from s2c.config import SCHEMA_PATH

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def types_of(s: dict) -> list[str]:
    """A subschema's ``type`` as a list (the schema writes one type as a string)."""
    t = s.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def schema_keys(schema=SCHEMA, prefix=()):
    """(key path, subschema) of every named property, depth first."""
    for k, sub in schema.get("properties", {}).items():
        yield prefix + (k,), sub
        yield from schema_keys(sub, prefix + (k,))
