"""Config fuzzing from the schema: configs drawn from ``workflow/schemas/config.schema.yaml``
(hypothesis-jsonschema), valid ones and near-valid ones (one key mutated: wrong type, out of range,
not an allowed word, empty list, reversed range, unknown key, not a finite number).

The property is the DAG build's config phase (``validate_workflow_config`` in workflow/Snakefile, then
``resolve_sections`` in workflow/rules/common.smk): every config either stops with one
``S2CError`` line naming the key, or every stage's resolver accepts it; a mutated key is always
refused (accepting it would be a silent no-op or a crash in a job). Bounded examples here; the long
run is ``-m fuzz`` (pyproject.toml). Snakemake itself is run on a few mutations in the long run.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from s2c.config import key_name
from s2c.defaults import AUG_DEFAULTS, CAM_DEFAULTS
from s2c.errors import S2CError
from s2c.sections import validate_workflow_config as validate_config
from s2c.sections import (ABLATIONS, CAM_CHOICES, EVAL_SEG_CRF_DEFAULTS, EVAL_SEG_DEFAULTS, REFINEMENTS,
                          SEG_TRAIN_DEFAULTS, TRAIN_DEFAULTS, resolve_sections)

REPO = Path(__file__).resolve().parents[1]
from _schema import SCHEMA, schema_keys, types_of  # noqa: E402
SHIPPED = ["config/config.yaml", "config/voc.yaml", "config/coco.yaml", "config/coco_mini.yaml"]

#: examples per property: the default suite (seconds) and the long run (``-m fuzz``)
EXAMPLES = 60
LONG_EXAMPLES = 3000
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                  HealthCheck.data_too_large])

#: fixed-length pairs of numbers that are not [lo, hi] ranges (every other one must refuse lo > hi)
NOT_RANGES = {("cam", "augment", "crop_size")}  # [h, w]


# ------------------------------------------------------------------------------------ schema
_types = types_of


def _node(schema: dict, path) -> dict:
    for p in path:
        schema = schema["properties"][p]
    return schema


#: the key lists of the sections s2c.sections owns (the schema leaves their unknown keys to it)
SECTION_KEYS = {
    ("cam",): {*TRAIN_DEFAULTS, *CAM_DEFAULTS},
    ("cam", "ssc"): set(TRAIN_DEFAULTS["ssc"]),
    ("cam", "cpm"): set(TRAIN_DEFAULTS["cpm"]),
    ("cam", "diagnostics"): set(TRAIN_DEFAULTS["diagnostics"]),
    ("cam", "augment"): set(AUG_DEFAULTS),
    ("seg",): set(SEG_TRAIN_DEFAULTS),
    ("eval_seg",): set(EVAL_SEG_DEFAULTS),
    ("eval_seg", "crf"): set(EVAL_SEG_CRF_DEFAULTS),
}
#: the allowed words s2c.sections holds for keys the schema only gives a pattern
WORDS = {("cam", *k): list(v) for k, v in CAM_CHOICES.items()}
WORDS[("cam", "ablation")] = [*ABLATIONS, None]
WORDS[("pseudo", "refine")] = list(REFINEMENTS)


def strict_schema() -> dict:
    """The schema with s2c.sections' key lists and allowed words written in, so that drawn configs
    are mostly valid (the real schema leaves those to the resolvers, which are what is tested)."""
    s = copy.deepcopy(SCHEMA)
    s.pop("$schema", None)
    for path in SECTION_KEYS:
        try:
            _node(s, path)["additionalProperties"] = False
        except KeyError:
            pass  # a section the schema does not describe: test_every_section_key_is_in_the_schema
    for path, words in WORDS.items():
        node = _node(s, path)
        node.pop("pattern", None)
        node["enum"] = words
    return s


def test_an_unprintable_key_keeps_the_message_on_one_line():
    with pytest.raises(S2CError) as e:
        resolve_sections({"cam": {"a\nb": 1}})
    assert "\n" not in str(e.value) and "cam.'a\\nb'" in str(e.value)


def test_every_section_key_is_in_the_schema():
    """Types and ranges of every key a resolver takes are the schema's (a key missing there takes
    any value until a job trips over it)."""
    for path, keys in SECTION_KEYS.items():
        assert set(_node(SCHEMA, path)["properties"]) == keys, path


# ----------------------------------------------------------------------------- the property
def dag_config_check(cfg: dict) -> dict:
    """What the DAG build does with a config before any rule: validate, then resolve every section."""
    cfg = copy.deepcopy(cfg)
    validate_config(cfg)
    return resolve_sections(cfg)


def names_key(msg: str, path) -> bool:
    dotted = ".".join(str(p) for p in path)
    if dotted in msg:
        return True
    # the warm-up's cam overlay is resolved as a cam section: "ablations.warmup.cam: ... cam.<key>"
    if tuple(path[:3]) == ("ablations", "warmup", "cam") and len(path) > 3:
        return "ablations.warmup.cam" in msg and "cam." + ".".join(path[3:]) in msg
    return False


def expect_refused(cfg: dict, path, what: str):
    try:
        dag_config_check(cfg)
    except S2CError as e:
        msg = str(e)
        assert "\n" not in msg, f"{what}: a multi-line message:\n{msg}"
        assert names_key(msg, path), f"{what}: the message does not name {'.'.join(path)}: {msg}"
        return
    except Exception as e:  # noqa: BLE001 - anything else is a traceback at the DAG build
        raise AssertionError(f"{what}: {type(e).__name__} instead of a config error: {e}") from e
    raise AssertionError(f"{what}: accepted at the DAG build (a silent no-op or a job's crash)")


def _dotted_keys(cfg: dict, prefix=()):
    for k, v in cfg.items():
        yield ".".join((*prefix, key_name(str(k))))
        if isinstance(v, dict):
            yield from _dotted_keys(v, (*prefix, key_name(str(k))))


def expect_accepted_or_named(cfg: dict):
    """A drawn valid config: accepted, or refused in one line naming a key it holds (cross-key
    rules such as cam.cpm.start_step with start_fraction, ranges drawn as [hi, lo])."""
    try:
        dag_config_check(cfg)
    except S2CError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert any(k in msg for k in _dotted_keys(cfg) if "." in k), msg
    except Exception as e:  # noqa: BLE001 - anything else is a traceback at the DAG build
        raise AssertionError(f"{type(e).__name__} instead of a config error: {e}") from e


# ----------------------------------------------------------------------------- strategies
_WORD = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)


def _not_a_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return s not in ("null", "true", "false", "yes", "no", "on", "off", "y", "n")
    return False


_BY_TYPE = {
    "string": _WORD.filter(_not_a_number),
    "integer": st.integers(-5, 5),
    "number": st.floats(-5, 5, allow_nan=False).filter(lambda x: x != int(x)),
    "boolean": st.booleans(),
    "array": st.just([1, "x"]),
    "object": st.just({"x": 1}),
    "null": st.none(),
}


def _other_types(s: dict) -> list[str]:
    types = set(_types(s))
    if "number" in types:
        types.add("integer")  # an integer is a number
    return [t for t in _BY_TYPE if t not in types]


def _outside(s: dict, num: str):
    """Strategies for numbers just past each bound of ``s``."""
    out = []
    ints = num == "integer"
    if "minimum" in s:
        m = s["minimum"]
        out.append(st.integers(m - 100, m - 1) if ints else st.floats(m - 100, m, exclude_max=True))
    if "exclusiveMinimum" in s:
        m = s["exclusiveMinimum"]
        out.append(st.integers(m - 100, m) if ints else st.floats(m - 100, m))
    if "maximum" in s:
        m = s["maximum"]
        out.append(st.integers(m + 1, m + 100) if ints else st.floats(m, m + 100, exclude_min=True))
    if "exclusiveMaximum" in s:
        m = s["exclusiveMaximum"]
        out.append(st.integers(m, m + 100) if ints else st.floats(m, m + 100))
    return out


def _num_type(s: dict) -> str | None:
    t = _types(s)
    return "integer" if "integer" in t else "number" if "number" in t else None


def _valid_item(items: dict):
    return from_schema({k: v for k, v in items.items() if k not in ("description", "default")})


def mutations():
    """(key path, kind, value strategy) of every one-key mutation the schema allows to name."""
    rows = [((), "unknown key", _WORD.filter(lambda w: w not in SCHEMA["properties"]).map(lambda w: {f"{w}_zz": 1}))]
    strict = strict_schema()
    for path, s in schema_keys(strict):
        types = _types(s)
        if "coco_splits" in path:
            continue
        others = _other_types(s)
        if others:
            rows.append((path, "wrong type", st.one_of([_BY_TYPE[t] for t in others])))
        num = _num_type(s)
        if num:
            rows += [(path, "out of range", v) for v in _outside(s, num)]
            if num == "number":
                rows.append((path, "not finite", st.sampled_from([math.nan, math.inf, -math.inf, "nan", ".inf"])))
        if "enum" in s:
            words = s["enum"]
            rows.append((path, "not an allowed word", _WORD.filter(lambda w, ws=words: w not in ws
                                                                   and not w.isdigit())))
        if "array" in types:
            rows.append((path, "empty list", st.just([])))
            items = s.get("items", {})
            n = max(s.get("minItems", 1), 1)
            inum = _num_type(items)
            if inum:
                for bad in _outside(items, inum):
                    rows.append((path, "item out of range",
                                 st.tuples(st.lists(_valid_item(items), min_size=n - 1, max_size=n - 1), bad)
                                 .map(lambda t: [*t[0], t[1]])))
                if s.get("minItems") == s.get("maxItems") == 2 and path not in NOT_RANGES:
                    pair = st.lists(_valid_item(items), min_size=2, max_size=2, unique=True)
                    rows.append((path, "reversed range", pair.map(lambda p: sorted(p, reverse=True))))
        if "object" in types and not isinstance(s.get("additionalProperties"), dict):
            known = set(s.get("properties", {}))
            rows.append((path, "unknown key", _WORD.filter(lambda w, k=known: w not in k)
                         .map(lambda w: {f"{w}_zz": 1})))
    return rows


MUTATIONS = mutations()


def _fill_required(cfg: dict, path):
    """Make each section on ``path`` a mapping holding its required keys, so that the mutated key is
    the only problem (e.g. ablations.warmup.probe.steps needs ablations.warmup.epochs)."""
    sch, d = SCHEMA, cfg
    for p in path[:-1]:
        sch = sch["properties"][p]
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
        for r in sch.get("required", []):
            if r not in d:
                d[r] = sch["properties"][r].get("minimum", 1)


def mutate(cfg: dict, path, kind: str, value) -> tuple[dict, tuple]:
    cfg = copy.deepcopy(cfg)
    if kind == "unknown key":
        (k, v), = value.items()
        _fill_required(cfg, (*path, k))
        d = cfg
        for p in path:
            d = d[p]
        d[k] = v
        return cfg, (*path, k)
    _fill_required(cfg, path)
    d = cfg
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    return cfg, path


def _shipped(name: str) -> dict:
    cfg = yaml.safe_load((REPO / name).read_text())
    cfg["data"]["root"] = "/data"  # the folder check is the workflow's, not the config phase's
    return cfg


VALID = from_schema(strict_schema())
BASES = st.one_of(st.sampled_from(SHIPPED).map(_shipped), VALID)


@st.composite
def near_valid(draw, bases=BASES):
    base = draw(bases)
    try:
        dag_config_check(base)
    except S2CError:
        base = _shipped(SHIPPED[0])  # a drawn base that breaks a cross-key rule: mutate the demo config
    path, kind, values = draw(st.sampled_from(MUTATIONS))
    cfg, key = mutate(base, path, kind, draw(values))
    return cfg, key, f"{'.'.join(map(str, path))} {kind}"


def test_mutation_table_covers_every_kind():
    kinds = {k for _, k, _ in MUTATIONS}
    assert kinds == {"wrong type", "out of range", "not finite", "not an allowed word", "empty list",
                     "item out of range", "reversed range", "unknown key"}, kinds
    assert ("seg", "scale_range") in {p for p, k, _ in MUTATIONS if k == "reversed range"}
    assert ("infer_cam", "scales") in {p for p, k, _ in MUTATIONS if k == "empty list"}


@settings(max_examples=EXAMPLES, **FUZZ)
@given(VALID)
def test_fuzz_valid_configs_pass_every_resolver_or_name_a_key(cfg):
    expect_accepted_or_named(cfg)


@settings(max_examples=EXAMPLES, **FUZZ)
@given(near_valid())
def test_fuzz_one_mutated_key_is_refused_naming_it(case):
    cfg, key, what = case
    expect_refused(cfg, key, what)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **FUZZ)
@given(VALID)
def test_fuzz_long_valid_configs(cfg):
    expect_accepted_or_named(cfg)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **FUZZ)
@given(near_valid())
def test_fuzz_long_mutated_keys(case):
    cfg, key, what = case
    expect_refused(cfg, key, what)


@pytest.mark.parametrize("path,kind,values", MUTATIONS, ids=[f"{'.'.join(p)}-{k}" for p, k, _ in MUTATIONS])
@pytest.mark.fuzz
@settings(max_examples=20, **FUZZ)
@given(data=st.data())
def test_fuzz_long_every_mutation_of_the_demo_config(path, kind, values, data):
    """Every (key, mutation) row at least a few times, whatever the random walk above favoured."""
    cfg, key = mutate(_shipped(SHIPPED[0]), path, kind, data.draw(values))
    expect_refused(cfg, key, f"{'.'.join(path)} {kind}")


# ----------------------------------------------------------------------- at the DAG build
def smk(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("override,needle", [
    ("infer_cam={scales: []}", "config key infer_cam.scales = [] must hold at least 1 item(s)"),
    ("seg={scale_range: [0.6, 0.4]}", "config key seg.scale_range = [0.6, 0.4] must be [lo, hi] with lo <= hi"),
    ("cam={lr: nan}", "config key cam.lr = nan must be a finite number"),
], ids=["empty-infer-scales", "reversed-seg-scale-range", "nan-lr"])
def test_dag_build_refuses_in_one_line(tmp_path, override, needle):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", override)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and f"config error: {needle}" in text, text
    assert "Traceback" not in text and "Building DAG" not in text, text


def _yaml_safe(cfg: dict) -> bool:
    try:
        yaml.safe_dump(cfg)
    except yaml.YAMLError:
        return False
    return True


@pytest.mark.fuzz
@settings(max_examples=25, **FUZZ)
@given(near_valid(st.just(SHIPPED[0]).map(_shipped)))
@example(case=(*mutate(_shipped(SHIPPED[0]), ("data", "root"), "wrong type", [1, "x"]), "data.root wrong type"))
def test_fuzz_long_dag_build_of_mutated_configs(tmp_path_factory, case):
    """The in-process check above is what Snakemake runs: the same configs through `snakemake -n`."""
    cfg, key, what = case
    tmp = tmp_path_factory.mktemp("dag")
    if isinstance(cfg.get("data"), dict) and tuple(key[:2]) != ("data", "root"):
        cfg["data"]["root"] = str(tmp)  # a folder that exists; a mutated root must stay mutated
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp / "work"), "-n", "--cores", "1",
              "--configfile", str(path))
    text = out.stdout + out.stderr
    assert out.returncode != 0, (what, text)
    assert "Traceback" not in text and "config error: " in text, (what, text)
    line = next(ln for ln in text.splitlines() if "config error: " in ln)
    assert names_key(line, key), (what, line)
