"""The workflow's config schema as the fault table and the config fuzzer walk it."""

from __future__ import annotations

import yaml

from s2c.config import SCHEMA_PATH, fill_schema_defaults
from s2c.sections import SCHEMA_DEFAULTS

#: The schema file as written (it states the workflow-level defaults only).
RAW_SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
#: The schema the DAG build validates against: the file with s2c.sections.SCHEMA_DEFAULTS filled in.
SCHEMA = fill_schema_defaults(RAW_SCHEMA, SCHEMA_DEFAULTS)


def types_of(s: dict) -> list[str]:
    """A subschema's ``type`` as a list (the schema writes one type as a string)."""
    t = s.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def schema_keys(schema=SCHEMA, prefix=()):
    """(key path, subschema) of every named property, depth first."""
    for k, sub in schema.get("properties", {}).items():
        yield prefix + (k,), sub
        yield from schema_keys(sub, prefix + (k,))
