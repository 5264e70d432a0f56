"""Fault / bad-input table: every row is one thing a user can get wrong or one fault the
machine can inject, and what s2c must do about it — a one-line error naming the file or key and
the fix, before any expensive job where it can be checked then, and never a silent result.

Groups (docs/CHECKS.md):
  shell     every free-form string key reaches the rule commands intact and runs nothing; every
            patterned string key refuses shell characters at DAG build
  cli       command-line (--config) strings mean what the same value in a config file means;
            an unknown key is one line
  range     every numeric range, type and enum in the schema is enforced at DAG build
  dag       cam.augment typos, cam.lr -1, a string lr fail at DAG build (snakemake -n)
  cache     each array of each SAM cache kind: deleted / truncated chunks are errors in readers
            and in ``s2c sam_cache verify``
  rerun     forced reruns (-R) of the trainers retrain and leave no output missing
  misc      corrupt-image hint, GT mask size, read-only weights folder, sam.num_workers, DataLoader
            worker errors
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from s2c.sections import resolve_sections
from s2c.sections import validate_workflow_config as validate_config
from s2c.errors import S2CError

REPO = Path(__file__).resolve().parents[1]
from _schema import SCHEMA, schema_keys, types_of  # noqa: E402
BASE = yaml.safe_load((REPO / "config/config.yaml").read_text())


def smk(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


_types = types_of


def set_key(cfg, path, value):
    d = cfg
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def get_key(cfg, path):
    for p in path:
        cfg = cfg[p]
    return cfg


def base():
    return copy.deepcopy(BASE)


# ================================================================================= shell
# String keys that hold arbitrary text (paths): they must reach every command that uses them as
# one argument. Keys with a pattern (names) must refuse shell characters instead.
FREE_STRING_KEYS = sorted(".".join(p) for p, s in schema_keys() if "string" in _types(s) and "enum" not in s
                          and s.get("pattern", "").startswith("^[^"))
NAMED_STRING_KEYS = sorted(".".join(p) for p, s in schema_keys() if "string" in _types(s) and "enum" not in s
                           and not s.get("pattern", "^[^").startswith("^[^"))


def payload(key: str) -> str:
    # a space, a command substitution, a command separator, backticks and both quote kinds
    return f"{key}@ x$(touch PWNED1);touch PWNED2;`touch PWNED3`'q\"z"


def test_every_string_key_of_the_schema_is_classified():
    for path, s in schema_keys():
        if "string" in _types(s) and "enum" not in s:
            assert "pattern" in s, f"string key {'.'.join(path)} has no pattern in the schema"


FAKE_PY = """#!/bin/sh
exec "{py}" -c 'import json, os, sys; open(os.environ["ARGV_LOG"], "a").write(json.dumps(sys.argv[1:]) + "\\n")' "$@"
"""


@pytest.fixture(scope="module")
def shell_run(tmp_path_factory):
    """Dry-run the demo DAG with every free-form string key set to a shell payload, then execute
    each printed job command with bash, `s2c` and `python` replaced by a recorder: (argv lists, workdir)."""
    work = tmp_path_factory.mktemp("shell") / "work dir"
    work.mkdir()
    cfg = base()
    cfg["sam"]["num_workers"] = 3  # also probes that sam.num_workers reaches the cache rules
    for key in FREE_STRING_KEYS:
        path = tuple(key.split("."))
        if key.startswith("data.coco_splits"):
            continue  # additionalProperties: covered below
        set_key(cfg, path, payload(key))
    cfg["data"]["coco_splits"] = {"train": {"images": payload("coco-images"), "annotations": payload("coco-ann")}}
    for key in ("sam.checkpoint", "cam.pretrained", "seg.pretrained"):  # files the DAG build checks
        (work / payload(key)).write_bytes(b"fake weights")
    for key in ("external.cams", "external.pseudo"):  # folders the DAG build checks
        (work / payload(key)).mkdir()
    cfgfile = work / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    # every target the workflow defines that the demo config can build: the default DAG (`all`)
    # and the ablation sweep
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(work), "-n", "-p", "--cores", "1", "all", "ablations",
              "--configfile", str(cfgfile))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    cmds = [ln[len("Shell command: "):] for ln in text.splitlines() if ln.startswith("Shell command: ")
            and ln != "Shell command: None"]  # None: a `run:` rule (Python, no shell)
    logs = [ln.split("log: ", 1)[1] for ln in text.splitlines() if ln.strip().startswith("log: ")]
    assert len(cmds) >= 25, text
    fake = tmp_path_factory.mktemp("fakebin")
    for name in ("python", "s2c"):  # the stages run as `s2c <stage>`; a few rules call python
        (fake / name).write_text(FAKE_PY.format(py=sys.executable))
        (fake / name).chmod(0o755)
    argv_log = fake / "argv.jsonl"
    for log in logs:
        (work / log).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "ARGV_LOG": str(argv_log)}
    for cmd in cmds:
        r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr)
    calls = [json.loads(ln) for ln in argv_log.read_text().splitlines()]
    assert len(calls) >= len(cmds)  # one python call per command at least (some chain two)
    return calls, work


@pytest.mark.parametrize("key", FREE_STRING_KEYS + ["data.coco_splits.*.images", "data.coco_splits.*.annotations"])
def test_shell_free_string_key_reaches_commands_intact(shell_run, key):
    calls, work = shell_run
    pwned = sorted(p.name for p in work.rglob("PWNED*")) + sorted(p.name for p in Path.cwd().glob("PWNED*"))
    assert not pwned, f"a config value ran a command: {pwned}"
    if key.startswith("data.coco_splits"):
        value = payload("coco-images" if key.endswith("images") else "coco-ann")
    else:
        value = payload(key)
    args = [a for argv in calls for a in argv]
    holding = [a for a in args if value in a or value.replace('"', '\\"') in a]  # JSON escapes the quote
    assert holding, f"{key}: the value reached no command intact"
    # no argument holds a piece of this value without the whole of it (a split or cut value)
    tag = value.split(" ", 1)[0]
    for a in args:
        if tag in a:
            assert value in a or value.replace('"', '\\"') in a, (key, a)


def test_shell_sam_num_workers_reaches_the_cache_rules(shell_run):
    calls, _ = shell_run
    cache_calls = [c for c in calls if any(m in c for m in ("sam_embed", "sam_everything"))]
    assert len(cache_calls) == 2
    for c in cache_calls:
        assert json.loads(c[c.index("--cfg") + 1])["num_workers"] == 3


@pytest.mark.parametrize("key", NAMED_STRING_KEYS)
@pytest.mark.parametrize("bad", ["a b", "x;touch PWNED", "$(id)", "a/b", "`id`"])
def test_shell_named_string_key_refuses_shell_characters(key, bad):
    cfg = base()
    set_key(cfg, tuple(key.split(".")), bad)
    with pytest.raises(S2CError, match=rf"config key {key} = .*rename it|config key {key} = .*must be"):
        validate_config(cfg)


def test_shell_named_key_refusal_is_one_line_at_dag_build(tmp_path):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", "run=a;touch PWNED")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "config key run = 'a;touch PWNED'" in text
    assert "Traceback" not in text and len(text.splitlines()) < 8, text
    assert not list(tmp_path.rglob("PWNED"))


# ================================================================================= cli
NUMERIC_KEYS = [(p, s) for p, s in schema_keys() if set(_types(s)) & {"integer", "number", "boolean"}
                and "string" not in _types(s) and s.get("default") is not None]


@pytest.mark.parametrize("path,sub", NUMERIC_KEYS, ids=[".".join(p) for p, _ in NUMERIC_KEYS])
def test_cli_string_values_are_coerced_like_a_config_file(path, sub):
    """`--config 'sec={key: 2}'` hands "2" over (BaseLoader): it must validate as the number."""
    value = sub["default"]
    cfg = base()
    set_key(cfg, path, str(value).lower() if isinstance(value, bool) else str(value))
    validate_config(cfg)
    got = get_key(cfg, path)
    assert got == value and isinstance(got, bool) == isinstance(value, bool) and not isinstance(got, str), (path, got)


def test_cli_sam_parts_on_the_command_line(tmp_path):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", "sam={parts: 2}", "cam={lr: 1e-3, epochs: 2}")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert any(ln.split()[:2] == ["sam_embed", "2"] for ln in text.splitlines()), text


def test_cli_unknown_top_level_key_is_one_line(tmp_path):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", "lerning_rate=0.1")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "unknown config key(s) lerning_rate in the top level" in text
    assert len(text.splitlines()) < 8 and "$schema" not in text, text


# ================================================================================= range
def _bad_values(s):
    """Values just outside each bound of a schema entry (and a wrong-typed one)."""
    out = []
    t = _types(s)
    num = "integer" if "integer" in t else "number"
    step = 1 if num == "integer" else 1e-3
    if "minimum" in s:
        out.append(("minimum", s["minimum"] - step))
    if "exclusiveMinimum" in s:
        out.append(("exclusiveMinimum", s["exclusiveMinimum"]))
    if "maximum" in s:
        out.append(("maximum", s["maximum"] + step))
    if "exclusiveMaximum" in s:
        out.append(("exclusiveMaximum", s["exclusiveMaximum"]))
    return out


def _fill_required(cfg, path):
    """Give every section on ``path`` its required numeric keys (at their minimum), so that the bad
    value set deeper down (e.g. ablations.warmup.probe.steps) is the only problem."""
    sch, d = SCHEMA, cfg
    for p in path[:-1]:
        sch = sch["properties"][p]
        d = d.setdefault(p, {})
        for r in sch.get("required", []):
            if r not in d and "minimum" in sch["properties"][r]:
                d[r] = sch["properties"][r]["minimum"]


RANGE_ROWS = []
for _p, _s in schema_keys():
    if any(seg == "coco_splits" for seg in _p):
        continue
    for _kind, _v in _bad_values(_s):
        if "array" in _types(_s) and "integer" not in _types(_s):
            continue
        RANGE_ROWS.append((_p, _kind, _v))
    _items = _s.get("items") if "array" in _types(_s) else None
    if isinstance(_items, dict):
        for _kind, _v in _bad_values(_items):
            n = _s.get("minItems", 1)
            RANGE_ROWS.append((_p, f"items.{_kind}", [_v] * max(n, 1)))
    if set(_types(_s)) & {"integer", "number"} and "string" not in _types(_s):
        RANGE_ROWS.append((_p, "type", "abc"))


@pytest.mark.parametrize("path,kind,value", RANGE_ROWS,
                         ids=[f"{'.'.join(p)}-{k}" for p, k, _ in RANGE_ROWS])
def test_range_every_schema_bound_is_enforced(path, kind, value):
    cfg = base()
    _fill_required(cfg, path)
    set_key(cfg, path, value)
    with pytest.raises(S2CError, match=rf"config key {'.'.join(path)}[ .=\[]"):
        validate_config(cfg)


ENUM_ROWS = [(p, s) for p, s in schema_keys() if "enum" in s]


@pytest.mark.parametrize("path,sub", ENUM_ROWS, ids=[".".join(p) for p, _ in ENUM_ROWS])
def test_range_every_enum_is_enforced(path, sub):
    cfg = base()
    set_key(cfg, path, "no_such_choice")
    with pytest.raises(S2CError, match=rf"config key {'.'.join(path)} = 'no_such_choice'"):
        validate_config(cfg)


# ================================================================================= dag
@pytest.mark.parametrize("override,needle", [
    ("cam={augment: {crop_sise: 128}}", "cam.augment.crop_sise"),
    ("cam={lr: -1}", "config key cam.lr = -1.0 must be > 0"),
    ("cam={lr: fast}", "config key cam.lr = 'fast' must be of type number"),
    ("cam={augment: {resize_long: [300, 200]}}", "cam.augment"),
], ids=["augment-typo", "negative-lr", "string-lr", "augment-bad-range"])
def test_dag_bad_cam_values_fail_at_dag_build(tmp_path, override, needle):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", override)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and needle in text, text
    assert "Traceback" not in text and "Building DAG" not in text, text


@pytest.mark.parametrize("override,needle", [
    ("sam={model_type: vit_h}", "config error: SAM vit_h checkpoint weights/sam_vit_h_4b8939.pth not found"),
    ("cam={pretrained: /no/such/r38.params}", "config error: cam.pretrained '/no/such/r38.params' is not a file"),
    ("seg={pretrained: /no/such/r38.params}", "config error: seg.pretrained '/no/such/r38.params' is not a file"),
], ids=["vit_h-without-checkpoint", "cam-pretrained-missing", "seg-pretrained-missing"])
def test_dag_missing_weight_files_fail_at_dag_build(tmp_path, override, needle):
    out = smk("-d", str(tmp_path), "-n", "--cores", "1", "eval_voc", "--configfile", "config/config.yaml",
              "--config", override)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and needle in text, text
    assert "Traceback" not in text and "ValueError" not in text and "Building DAG" not in text, text


def test_dag_augment_typo_in_process():
    cfg = base()
    cfg["cam"]["augment"] = {"fllip": True}
    validate_config(cfg)
    with pytest.raises(S2CError, match="cam.augment.fllip"):
        resolve_sections(cfg)


# ================================================================================= cache
def _embed_store(tmp_path):
    from s2c.sam.cache import PartWriter, make_identity
    from s2c.stages.sam_embed import embed_settings

    w = PartWriter(tmp_path / "e.part0.zarr", make_identity("embed", "vit_test", "x", embed_settings(), "h"),
                   ["a", "b"], 0, 1)
    w.write_embedding(0, torch.zeros(256, 64, 64), (10, 20), (512, 1024))  # all zero: still stored
    w.write_embedding(1, torch.randn(256, 64, 64), (10, 20), (512, 1024))
    return w.finalize()


def _se_store(tmp_path):
    from s2c.sam.cache import PartWriter, make_identity

    w = PartWriter(tmp_path / "s.part0.zarr", make_identity("se", "vit_test", "x", {}, "h"), ["a", "b"], 0, 1)
    w.write_se(0, np.zeros((6, 7), np.int32))  # no segment
    w.write_se(1, (np.arange(42).reshape(6, 7) % 5).astype(np.int32))
    return w.finalize()


def _chunk(store: Path, array: str, index: int) -> Path:
    files = sorted(f for f in (store / array / "c").rglob("*") if f.is_file())
    if array == "meta" or array == "embedding":
        return next(f for f in files if f.relative_to(store / array / "c").parts[0] == str(index))
    return files[0]


CACHE_ROWS = [
    ("embed", "embedding", "delete", "missing chunk"),
    ("embed", "embedding", "truncate", "unreadable data"),
    ("embed", "meta", "delete", "missing meta row|has no data"),
    ("embed", "meta", "truncate", "unreadable"),
    ("se", "se/1", "delete", "missing chunk"),
    ("se", "se/1", "truncate", "unreadable data"),
    ("se", "se/1", "delete-array", "missing array"),
    ("se", "meta", "delete", "missing meta row|has no data"),
    ("se", "meta", "truncate", "unreadable"),
]


def _damage(store: Path, array: str, how: str):
    if how == "delete-array":
        shutil.rmtree(store / array)
        return
    f = _chunk(store, array, 1)
    if how == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])


@pytest.mark.parametrize("kind,array,how,needle", CACHE_ROWS, ids=[f"{k}-{a}-{h}" for k, a, h, _ in CACHE_ROWS])
def test_cache_damage_is_an_error_in_readers_and_verify(tmp_path, capsys, kind, array, how, needle):
    from s2c.sam.cache import EmbeddingReader, SEMapReader, join_parts, verify
    from s2c.stages.sam_cache import main

    store = _embed_store(tmp_path) if kind == "embed" else _se_store(tmp_path)
    manifest = tmp_path / f"{kind}.json"
    join_parts(kind, [store], manifest)
    verify(manifest)  # intact: passes, the all-zero items included
    _damage(store, array, how)
    reader = (EmbeddingReader if kind == "embed" else SEMapReader)(manifest)
    read = reader.embedding if kind == "embed" else reader.se_map
    with pytest.raises(S2CError, match=needle) as e:
        read("b")
    assert str(store) in str(e.value) or str(store.resolve()) in str(e.value)
    if array != "meta":
        read("a")  # the other image is unaffected
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(manifest), "--quiet"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.startswith("s2c: error: ") and len(err.strip().splitlines()) == 1, err
    assert store.name in err


def test_cache_se_map_without_segments_from_an_old_store_still_reads(tmp_path):
    """Stores written before write_empty_chunks have no chunk for an all-zero SE map: not an error."""
    from s2c.sam.cache import SEMapReader

    store = _se_store(tmp_path)
    for f in (store / "se" / "0").rglob("*"):
        if f.is_file() and f.name != "zarr.json":
            f.unlink()
    assert SEMapReader(store).se_map("a").sum() == 0


def test_cache_dataloader_worker_error_prints_one_line(tmp_path, capsys):
    from s2c.errors import cli_main
    from s2c.sam.cache import EmbeddingReader

    store = _embed_store(tmp_path)
    _damage(store, "embedding", "delete")
    reader = EmbeddingReader(store)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, k):
            return reader.embedding(["a", "b"][k])

    @cli_main
    def stage():
        list(torch.utils.data.DataLoader(DS(), batch_size=1, num_workers=1))

    with pytest.raises(SystemExit):
        stage()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "missing chunk" in err and "Traceback" not in err, err


# ================================================================================= rerun
def test_rerun_load_resumable_only_resumes_an_interrupted_run(tmp_path):
    from s2c import train_utils as tu

    ck = tu.Checkpointer(tmp_path)
    ident = {"cfg": {"epochs": 3, "lr": 0.1}, "inputs": "x"}
    ck.save({"epoch": 2, "step": 20, "identity": ident})
    assert tu.load_resumable(ck, ident)["epoch"] == 2  # killed after epoch 2 of 3: resume
    ck.save({"epoch": 3, "step": 30, "identity": ident})
    assert tu.load_resumable(ck, ident) is None  # finished: a (forced) rerun trains fresh
    assert tu.load_resumable(ck, {**ident, "inputs": "y"}) is None  # inputs changed


SEG_TINY = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "epochs": 1,
            "batch_size": 4, "crop_size": 64, "num_workers": 0, "log_every": 1}


def test_rerun_forced_train_seg_retrains_and_writes_every_output(synthetic_gt_labels, tmp_path, caplog):
    """`snakemake -R train_seg` deletes model.pt and losses.png, then runs the job over the final
    checkpoint: it must train again and write both (before: losses.png missing → Snakemake
    deleted model.pt)."""
    from s2c.stages.train_seg import train_seg

    data_cfg, labels = synthetic_gt_labels
    out = tmp_path / "seg"
    train_seg(data_cfg, "train", labels, out, SEG_TINY, device="cpu")
    ckpt_mtime = (out / "last.pt").stat().st_mtime_ns
    for f in ("model.pt", "losses.png"):
        (out / f).unlink()
    with caplog.at_level("WARNING"):
        train_seg(data_cfg, "train", labels, out, SEG_TINY, device="cpu")
    assert (out / "model.pt").is_file() and (out / "losses.png").is_file()
    assert (out / "last.pt").stat().st_mtime_ns != ckpt_mtime, "the rerun did not train"
    assert "finished run" in caplog.text


CAM_TINY = {"ablation": "baseline", "backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16,
            "epochs": 1, "batch_size": 4, "num_workers": 0, "augment": {"crop_size": 64, "resize_long": [64, 96]}}


def test_rerun_forced_train_cam_retrains(synthetic_voc, tmp_path, caplog):
    """`snakemake -R train_cam` after a code change must train, not 'resume' the finished run."""
    from s2c.stages.train_cam import train_cam

    data_cfg = {"kind": "voc", "root": str(synthetic_voc)}
    out = tmp_path / "cam"
    train_cam(data_cfg, "train", out, tmp_path, CAM_TINY, device="cpu", progress=False)
    ckpt_mtime = (out / "last.pt").stat().st_mtime_ns
    for f in ("model.pt", "losses.png"):
        (out / f).unlink()
    with caplog.at_level("INFO"):
        train_cam(data_cfg, "train", out, tmp_path, CAM_TINY, device="cpu", progress=False)
    assert (out / "model.pt").is_file() and (out / "losses.png").is_file()
    assert (out / "last.pt").stat().st_mtime_ns != ckpt_mtime, "the forced rerun did not train"
    assert not [r for r in caplog.records if r.getMessage().startswith("resuming from")]
    assert "finished run" in caplog.text


# ================================================================================= misc
def test_misc_corrupt_image_points_to_data_skip_corrupt(tmp_path):
    from s2c.sam.cache import PartWriter, make_identity
    from s2c.stages.sam_embed import embed_settings, handle_corrupt

    w = PartWriter(tmp_path / "e.zarr", make_identity("embed", "vit_test", "x", embed_settings(), "h"), ["a"], 0, 1)
    with pytest.raises(S2CError, match=r"data\.skip_corrupt: true") as e:
        handle_corrupt(w, 0, "cannot decode image JPEGImages/a.jpg", False)
    assert "sam.skip_corrupt" not in str(e.value)


def test_misc_gt_mask_of_another_size_names_the_file(synthetic_voc, tmp_path):
    from PIL import Image

    from s2c.data import open_dataset

    root = tmp_path / "voc"
    shutil.copytree(synthetic_voc, root)
    ds = open_dataset({"kind": "voc", "root": str(root)}, "train")
    bad = ds.ids[0]
    mask = ds._mask_path(bad)
    im = Image.open(mask)
    im.resize((im.width + 3, im.height)).save(mask)
    ds = open_dataset({"kind": "voc", "root": str(root)}, "train")
    with pytest.raises(S2CError, match=rf"GT mask {mask} is .* but its image .*{bad}"):
        ds.load_mask(bad)
    assert ds.load_mask(ds.ids[1]) is not None


@pytest.mark.parametrize("which", ["efficientnet_lite0", "mobile_sam"])
def test_misc_read_only_weights_folder_that_holds_the_weights(tmp_path, monkeypatch, which):
    import s2c.io
    from s2c import weights as W

    name = W.EFFNET_LITE0_FILE if which == "efficientnet_lite0" else W.MOBILE_SAM_FILE
    src = REPO / "weights" / name
    if which == "efficientnet_lite0":
        src = W._effnet_package_file()
    elif not src.is_file():
        pytest.skip(f"{src} not provisioned")
    wd = tmp_path / "ro"
    wd.mkdir()
    shutil.copyfile(src, wd / name)
    wd.chmod(stat.S_IRUSR | stat.S_IXUSR)
    # root ignores permission bits: report the folder as unwritable the way a read-only mount does
    real = os.access
    monkeypatch.setattr(s2c.io.os, "access", lambda p, m: False if m & os.W_OK and Path(p) == wd else real(p, m))
    try:
        fn = W.ensure_efficientnet_lite0 if which == "efficientnet_lite0" else W.ensure_mobile_sam
        assert fn(wd) == wd / name
    finally:
        wd.chmod(0o755)


def test_misc_coco_image_of_another_size_than_its_annotation_names_the_file(tmp_path):
    from PIL import Image

    from s2c.data import open_dataset

    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "train" / "a.jpg")
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 24, "width": 30}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 9, 2, 9, 9, 2, 9]],
                            "area": 49.0, "iscrowd": 0, "bbox": [2, 2, 7, 7]}],
           "categories": [{"id": 1, "name": "person", "supercategory": ""}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(ann))
    ds = open_dataset({"kind": "coco", "root": str(tmp_path), "class_set": "voc20"}, "train")
    with pytest.raises(S2CError, match=r"instances_train\.json: image a\.jpg is 24x30 .* is 20x30"):
        ds.load_mask("a")


def test_misc_truncated_checkpoint_names_the_file(tmp_path):
    from s2c import train_utils as tu

    ck = tu.Checkpointer(tmp_path)
    ck.save({"epoch": 1, "identity": {}})
    ck.path.write_bytes(ck.path.read_bytes()[:20])
    with pytest.raises(S2CError, match=rf"cannot read checkpoint {ck.path} .*delete it"):
        tu.load_resumable(ck, {})


@pytest.mark.parametrize("what", ["missing", "partial", "not-a-cache"])
def test_cache_verify_of_a_wrong_path_is_one_line(tmp_path, capsys, what):
    from s2c.stages.sam_cache import main

    target = tmp_path / "embed.part0.zarr"
    if what == "partial":
        _embed_store(tmp_path).rename(tmp_path / "embed.part0.zarr.partial")
    elif what == "not-a-cache":
        target.mkdir()
        (target / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(target), "--quiet"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and len(err.strip().splitlines()) == 1 and str(target) in err, err
    if what == "partial":
        assert "interrupted job" in err


def test_misc_unwritable_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import s2c.io
    from s2c.errors import cli_main
    from s2c.io import ensure_writable_dir

    out = tmp_path / "results"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(s2c.io.os, "access", lambda p, m: False if m & os.W_OK and Path(p) == out else real(p, m))

    @cli_main
    def stage():
        ensure_writable_dir(out)

    with pytest.raises(SystemExit) as ex:
        stage()
    err = capsys.readouterr().err
    assert ex.value.code == 2 and f"output directory {out} is not writable" in err and len(err.splitlines()) == 1


def test_cache_resumed_writer_stores_an_all_zero_embedding(tmp_path):
    """A resumed part job reopens its arrays: they must still store chunks equal to the fill value,
    or the presence check would call the image deleted."""
    from s2c.sam.cache import EmbeddingReader, PartWriter, make_identity
    from s2c.stages.sam_embed import embed_settings

    ident = make_identity("embed", "vit_test", "x", embed_settings(), "h")
    w = PartWriter(tmp_path / "e.zarr", ident, ["a", "b"], 0, 1)
    w.write_embedding(0, torch.randn(256, 64, 64), (10, 20), (512, 1024))
    del w  # "killed" after one image
    w = PartWriter(tmp_path / "e.zarr", ident, ["a", "b"], 0, 1)
    assert w.resumed and w.todo() == [1]
    w.write_embedding(1, torch.zeros(256, 64, 64), (10, 20), (512, 1024))
    assert float(EmbeddingReader(w.finalize()).embedding("b").abs().sum()) == 0
