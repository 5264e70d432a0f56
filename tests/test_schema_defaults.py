"""One owner per default: the schema file states the workflow-level defaults, the Python tables
those of the stage sections, and no key has both.

Walks every key of every table against ``workflow/schemas/config.schema.yaml``: each table key is a
schema key (and each schema key of a table's section has its table default), the schema file
states no default a table owns, the defaults the DAG build fills (``s2c.sections.SCHEMA_DEFAULTS``)
are the tables', and the copies derived from a table (key subsets, function signatures) agree.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from pathlib import Path

import pytest

from s2c.data import DATA_DEFAULTS
from s2c.defaults import AUG_DEFAULTS, CAM_DEFAULTS, EVERYTHING_DEFAULTS, SEG_DEFAULTS
from s2c.refine.crf import CRF_DEFAULTS, dense_crf
from s2c.refine.sam_post import SAM_POST_DEFAULTS, sam_refine
from s2c.sections import (EVAL_CAM_DEFAULTS, EVAL_SEG_CRF_DEFAULTS, EVAL_SEG_DEFAULTS, INFER_CAM_DEFAULTS, MODEL_KEYS,
                          PSEUDO_DEFAULTS, SAM_EMBED_DEFAULTS, SAM_EVERYTHING_DEFAULTS, SAM_SECTION_DEFAULTS,
                          SCHEMA_DEFAULTS, SEG_TRAIN_DEFAULTS, TRAIN_DEFAULTS, resolve_infer_cam, resolve_pseudo,
                          validate_workflow_config)
from s2c.stages.probe_cam import PROBE_DEFAULTS

sys.path.insert(0, str(Path(__file__).parent))
from _schema import RAW_SCHEMA, SCHEMA  # noqa: E402

#: (schema path, the table owning the defaults of its keys, table keys the schema does not list).
#: A dict-valued table entry with keys is walked as the table of its sub-section.
TABLES: list[tuple[tuple[str, ...], dict, frozenset]] = [
    (("data",), DATA_DEFAULTS, frozenset()),
    (("sam",), SAM_SECTION_DEFAULTS, frozenset()),
    (("sam", "everything"), EVERYTHING_DEFAULTS, frozenset()),
    (("cam",), {**TRAIN_DEFAULTS, **CAM_DEFAULTS}, frozenset()),
    (("cam", "augment"), AUG_DEFAULTS, frozenset()),
    (("infer_cam",), INFER_CAM_DEFAULTS, frozenset()),
    (("eval_cam",), EVAL_CAM_DEFAULTS, frozenset()),
    (("pseudo",), PSEUDO_DEFAULTS, frozenset()),
    (("seg",), SEG_TRAIN_DEFAULTS, frozenset()),
    (("eval_seg",), EVAL_SEG_DEFAULTS, frozenset()),
    (("eval_seg", "crf"), EVAL_SEG_CRF_DEFAULTS, frozenset()),
    # probe_cam's seed is the ablation row's, not a config key
    (("ablations", "warmup", "probe"), PROBE_DEFAULTS, frozenset({"seed"})),
]
IDS = [".".join(p) for p, _, _ in TABLES]


def _node(schema: dict, path: tuple[str, ...]) -> dict:
    for k in path:
        schema = schema["properties"][k]
    return schema


def _owned(path, table, skip=frozenset()):
    """(key path, default) of every key the table owns, sub-sections walked."""
    for k, v in table.items():
        if k in skip:
            continue
        yield path + (k,), v
        if isinstance(v, dict) and v:
            yield from _owned(path + (k,), v)


OWNED = {p: v for path, table, skip in TABLES for p, v in _owned(path, table, skip)}


def _schema_defaults(schema: dict, prefix=()):
    """(key path, default) of every property of ``schema`` that states one."""
    for k, sub in schema.get("properties", {}).items():
        if "default" in sub:
            yield prefix + (k,), sub["default"]
        yield from _schema_defaults(sub, prefix + (k,))


@pytest.mark.parametrize("path,table,skip", TABLES, ids=IDS)
def test_every_table_key_is_a_schema_key_and_back(path, table, skip):
    def walk(node, tab, where):
        props = set(node.get("properties", {}))
        keys = set(tab) - (skip if where == path else set())
        assert keys - props == set(), f"{'.'.join(where)}: table keys the schema does not know"
        assert props - keys == set(), f"{'.'.join(where)}: schema keys without a table default"
        for k, v in tab.items():
            if isinstance(v, dict) and v:
                walk(node["properties"][k], v, where + (k,))

    walk(_node(RAW_SCHEMA, path), table, path)


def test_the_schema_file_states_no_default_a_table_owns():
    twice = sorted(".".join(p) for p, _ in _schema_defaults(RAW_SCHEMA) if p in OWNED)
    assert twice == [], f"defaults both in the schema file and in a Python table: {twice}"


def test_no_key_has_two_differing_defaults():
    """The schema the DAG build validates against gives every key one default: the table's."""
    for p, default in _schema_defaults(SCHEMA):
        if p in OWNED and not (isinstance(OWNED[p], dict) and OWNED[p]):
            assert json.dumps(default) == json.dumps(OWNED[p]), f"{'.'.join(p)}: schema {default!r}, table {OWNED[p]!r}"


@pytest.mark.parametrize("section", sorted(SCHEMA_DEFAULTS))
def test_the_dag_build_fills_the_tables_defaults(section):
    cfg = {"run": "r", "dataset": "d", "data": {"kind": "voc", "root": "/data"}}
    validate_workflow_config(cfg)
    table = {k: v for k, v in SCHEMA_DEFAULTS[section].items() if section != "data" or k not in ("kind", "root")}
    got = {k: v for k, v in cfg[section].items() if section != "data" or k not in ("kind", "root")}
    assert json.dumps(got, sort_keys=True) == json.dumps(table, sort_keys=True)


def test_filled_sections_resolve_to_themselves():
    cfg = {"run": "r", "dataset": "d", "data": {"kind": "voc", "root": "/data"}}
    validate_workflow_config(cfg)
    assert resolve_pseudo(copy.deepcopy(cfg["pseudo"])) == cfg["pseudo"]
    assert resolve_infer_cam(copy.deepcopy(cfg["infer_cam"])) == cfg["infer_cam"]


def test_every_table_default_validates():
    """Each table written out in full is a valid config: the tables' types agree with the schema."""
    cfg = {
        "run": "r", "dataset": "d", "data": {**DATA_DEFAULTS, "root": "/data"},
        "sam": {**SAM_SECTION_DEFAULTS, "everything": dict(EVERYTHING_DEFAULTS)},
        "cam": {**copy.deepcopy(TRAIN_DEFAULTS), **CAM_DEFAULTS, "augment": dict(AUG_DEFAULTS)},
        "infer_cam": dict(INFER_CAM_DEFAULTS), "eval_cam": dict(EVAL_CAM_DEFAULTS),
        "pseudo": copy.deepcopy(PSEUDO_DEFAULTS), "seg": dict(SEG_TRAIN_DEFAULTS),
        "eval_seg": {**EVAL_SEG_DEFAULTS, "crf": dict(EVAL_SEG_CRF_DEFAULTS)},
        "ablations": {"warmup": {"epochs": 1, "probe": {k: v for k, v in PROBE_DEFAULTS.items() if k != "seed"}}},
    }
    validate_workflow_config(cfg)


def test_derived_copies_agree_with_their_owner():
    for sub in (SAM_EMBED_DEFAULTS, SAM_EVERYTHING_DEFAULTS):
        assert sub == {k: SAM_SECTION_DEFAULTS[k] for k in sub}
    assert PSEUDO_DEFAULTS["crf"] == CRF_DEFAULTS and PSEUDO_DEFAULTS["sam"] == SAM_POST_DEFAULTS
    assert {k: SEG_TRAIN_DEFAULTS[k] for k in SEG_DEFAULTS} == SEG_DEFAULTS
    assert MODEL_KEYS == tuple(CAM_DEFAULTS)
    for fn, table in ((sam_refine, SAM_POST_DEFAULTS), (dense_crf, CRF_DEFAULTS)):
        params = inspect.signature(fn).parameters
        for k, v in table.items():
            if k in params:
                assert params[k].default == v and type(params[k].default) is type(v), f"{fn.__name__}({k}=…)"
