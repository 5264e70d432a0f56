"""Config plumbing at the bottom of the package: merging a section over its defaults, command-line
string coercion, and the workflow schema's validation with one-line errors.

Imports nothing of s2c but :mod:`s2c.errors`, so every layer may use it (data, models, sam). The
hyperparameter sections themselves (defaults, allowed values, resolvers, the DAG-build registry
:func:`s2c.sections.resolve_sections`) live in :mod:`s2c.sections`.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import S2CError


def coerce_scalar(default: Any, value: Any) -> Any:
    """A string that stands for a number, boolean or null becomes one, where the default is not a string.

    ``snakemake --config 'cam={seed: 1}'`` hands nested values over as strings ("1"): Snakemake
    parses them with YAML's BaseLoader. Parsed again here with the safe loader, against the type
    of the default (lists element by element), so the command line means what the config file does.
    """
    if isinstance(value, list):
        return [coerce_scalar(default[0] if isinstance(default, list) and default else None, v) for v in value]
    if isinstance(value, dict):
        d = default if isinstance(default, dict) else {}
        return {k: coerce_scalar(d.get(k), v) for k, v in value.items()}
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:  # YAML 1.1 reads "2e-3" as a string
            return int(value) if isinstance(default, int) else float(value)
        except ValueError:
            pass
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, (bool, int, float)) or parsed is None:
        return parsed
    return value


def key_name(k: Any) -> str:
    """A config key as a message shows it: as written, or quoted when it holds a newline or another
    unprintable character (the message stays one line)."""
    return k if isinstance(k, str) and k.isprintable() else repr(k)


def merge_section(defaults: dict, cfg: dict | None, section: str, *, ignore=frozenset(),
                  recurse: bool = False, opaque=frozenset()) -> dict:
    """``cfg`` over ``defaults`` (the one merge every stage uses); an unknown key raises S2CError
    naming it as ``section.key``, so typos fail loudly instead of being ignored.

    ``ignore``: keys of a shared section that belong to another stage (accepted, dropped).
    ``recurse``: merge dict-valued defaults key by key (sub-sections), except keys in ``opaque``,
    which are replaced whole.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults) - set(ignore))
    if unknown:
        names = ", ".join(f"{section}.{key_name(k)}" for k in unknown)
        raise S2CError(f"unknown config key(s) {names}: {unknown} not in the {section} section; known keys: "
                       f"{sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for k, v in cfg.items():
        if k not in defaults:
            continue
        sub = defaults[k]
        if recurse and isinstance(sub, dict) and isinstance(v, dict) and k not in opaque:
            v = merge_section(sub, v, f"{section}.{k}", recurse=True, opaque=opaque)
        out[k] = coerce_scalar(sub, v)
    return out


# ---------------------------------------------------------------------------------------------
# workflow-level schema: coercion of command-line strings, then validation with one-line errors
# ---------------------------------------------------------------------------------------------

#: The workflow config schema (also what ``workflow/Snakefile`` validates against).
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

_NULL_WORDS = ("null", "Null", "NULL", "~", "")
_BOOL_WORDS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _types(schema: dict) -> list[str]:
    t = schema.get("type")
    if t is None:
        return []
    return [t] if isinstance(t, str) else list(t)


def _coerce_by_schema(value: Any, schema: dict) -> Any:
    """A string that stands for the number / boolean / null the schema asks for becomes one.

    ``snakemake --config 'sam={parts: 2}'`` hands nested values over as strings (YAML BaseLoader);
    the same line in a config file gives an int. Where the schema also allows strings (e.g.
    ``sam.checkpoint: [string, null]``), only the words ``null`` / ``true`` / ``false`` are
    converted. Containers are converted element by element, in place for dicts.
    """
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k in list(value):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = _coerce_by_schema(value[k], sub)
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [_coerce_by_schema(v, items) for v in value] if isinstance(items, dict) else value
    if not isinstance(value, str):
        return value
    types = _types(schema)
    if "null" in types and value in _NULL_WORDS:
        return None
    if "boolean" in types and value in _BOOL_WORDS:
        return _BOOL_WORDS[value]
    if "string" in types:
        # an enum mixing numbers and words (cam.cpm.multimask_index: 0, 1, 2, best): "0" means 0
        if "integer" in types and value not in schema.get("enum", [value]):
            try:
                return int(value) if int(value) in schema["enum"] else value
            except ValueError:
                return value
        return value
    if "integer" in types:
        try:
            return int(value)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            pass
    if "array" in types or "object" in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, (list, dict)):
            return _coerce_by_schema(parsed, schema)
    return value


def _key(path) -> str:
    return ".".join(key_name(str(p)) for p in path) or "<top level>"


def _schema_error_line(err) -> str:
    """One line for a jsonschema ValidationError: the key, the bad value, what is allowed."""
    key, v, inst, sch = _key(err.absolute_path), err.validator, err.instance, err.schema
    if v == "additionalProperties":
        known = sorted(sch.get("properties", {}))
        unknown = sorted(set(inst) - set(known)) if isinstance(inst, dict) else []
        where = f"{key}." if err.absolute_path else ""
        section = f"the {key} section" if err.absolute_path else "the top level"
        return (f"unknown config key(s) {', '.join(where + key_name(str(u)) for u in unknown)} in {section}; "
                f"known keys: {', '.join(known)} (a typo? see workflow/schemas/config.schema.yaml)")
    if v == "required":
        where = f"section {key}" if err.absolute_path else "top level"
        return f"config {where} is missing the required key {err.message.split(' is a ')[0]}"
    if v == "type":
        want = " or ".join(_types(sch))
        return f"config key {key} = {inst!r} must be of type {want}"
    if v == "enum":
        return f"config key {key} = {inst!r}; use one of {sch['enum']}"
    if v == "pattern":
        return (f"config key {key} = {inst!r} has characters it may not hold (allowed: regex {sch['pattern']}); "
                "rename it")
    if v == "finite":
        return f"config key {key} = {inst!r} must be a finite number"
    if v == "increasing":
        return f"config key {key} = {inst!r} must be [lo, hi] with lo <= hi"
    if v in ("minItems", "maxItems"):
        most = "at least" if v == "minItems" else "at most"
        return f"config key {key} = {inst!r} must hold {most} {err.validator_value} item(s)"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if v in bounds:
        return f"config key {key} = {inst!r} must be {bounds[v]} {err.validator_value}"
    msg = err.message if len(err.message) < 200 else err.message[:200] + "…"
    return f"config key {key}: {msg}"


def fill_schema_defaults(schema: dict, tables: dict[str, dict]) -> dict:
    """``schema`` with the ``default`` of each key of ``tables`` (section name → that section's
    defaults) taken from the table: the tables own those defaults, the schema file states none.

    A dict-valued default whose schema lists properties becomes ``{}`` filled key by key, as a
    schema default of ``{}`` with defaulted properties would; keys the schema requires get no
    default (a missing one stays an error). Returns a copy; ``schema`` is left as it is.
    """
    schema = copy.deepcopy(schema)

    def fill(node: dict, table: dict, path: str) -> None:
        props, required = node.get("properties", {}), set(node.get("required", []))
        for k, v in table.items():
            if k in required:
                continue
            if k not in props:
                raise S2CError(f"default of {path}.{k} names no key of the schema; add it to the schema")
            sub = props[k]
            if "default" in sub and sub["default"] != v:
                raise S2CError(f"{path}.{k} has two defaults, {sub['default']!r} in the schema and {v!r} in "
                               "its table; keep the table's")
            if isinstance(v, dict) and v and "properties" in sub:
                sub["default"] = {}
                fill(sub, v, f"{path}.{k}")
            else:
                sub["default"] = copy.deepcopy(v)

    for section, table in tables.items():
        fill(schema["properties"][section], table, section)
    return schema


def validate_config(config: dict, schema_path: str | os.PathLike | None = None,
                    defaults: dict[str, dict] | None = None) -> dict:
    """Coerce command-line strings, fill defaults and validate ``config`` in place.

    Defaults: the schema's own, and those of ``defaults`` (section name → table,
    :func:`fill_schema_defaults`; the workflow passes :data:`s2c.sections.SCHEMA_DEFAULTS`).
    Raises S2CError with one line naming the first bad key (path ``section.key``) and the fix —
    not the schema dump Snakemake's ``validate`` prints. Returns ``config``.
    """
    # jsonschema (+ referencing, rpds) only for the workflow's DAG build: kept out of every stage's import
    from jsonschema import Draft202012Validator, ValidationError, validators

    schema = yaml.safe_load(open(schema_path or SCHEMA_PATH))
    if defaults:
        schema = fill_schema_defaults(schema, defaults)
    _coerce_by_schema(config, schema)
    props_validator = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from props_validator(validator, properties, instance, sch)

    type_validator = Draft202012Validator.VALIDATORS["type"]

    def finite_type(validator, types, instance, sch):
        # YAML reads .nan / .inf (and float() "nan" from the command line) as numbers that pass
        # every bound check (nan > 0 is false, so is nan <= 0)
        errors = list(type_validator(validator, types, instance, sch))
        yield from errors
        if not errors and isinstance(instance, float) and not math.isfinite(instance):
            yield ValidationError(f"{instance!r} is not a finite number", validator="finite")

    def increasing(validator, value, instance, sch):
        # JSON Schema cannot compare two items of one array: a [lo, hi] range says so with this keyword
        if value and isinstance(instance, list) and len(instance) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in instance) and instance[0] > instance[1]:
            yield ValidationError(f"{instance!r} is not increasing")

    Validator = validators.extend(Draft202012Validator, {"properties": set_defaults, "type": finite_type,
                                                          "increasing": increasing})
    errors = list(Validator(schema).iter_errors(config))
    if errors:
        # the shallowest error first (a wrong section type before what it would hide), then file order
        errors.sort(key=lambda e: len(e.absolute_path))
        more = f" (+{len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise S2CError(_schema_error_line(errors[0]) + more)
    return config
