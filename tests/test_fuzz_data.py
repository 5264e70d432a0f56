"""Dataset fuzzing: one mutation of a tiny VOC or COCO dataset (an entry's key dropped or of the
wrong type, duplicate ids, an annotation of a missing image, a missing / 0-byte / truncated / grey /
CMYK / 16-bit / EXIF-rotated image, a mask of another size or with unknown ids, an empty split)
run through the DAG build's dataset check (``s2c.stages.prepare.check_layout(quick=True)``, what
workflow/rules/prepare.smk runs), ``open_dataset`` and what the first jobs read (every image,
label and GT map).

Each mutation is either refused, with an S2CError line or a check problem naming the file, no
later than where it can be seen (json entries and missing files: the DAG build; file contents:
the job that reads them), or handled as documented (grey / CMYK / 16-bit → RGB, the EXIF tag
ignored, optional COCO keys): never a traceback, never a silently shorter split. Bounded examples
here; the long run is ``-m fuzz``. The named COCO cases also go through ``snakemake -n``.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from s2c.classes import COCO80_IDS
from s2c.data import open_dataset
from s2c.errors import S2CError
from s2c.stages.prepare import check_layout

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = 40
LONG_EXAMPLES = 1500
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
H, W = 20, 30
PERSON, DOG, CAT = 1, 18, 17  # COCO category ids of VOC classes


# --------------------------------------------------------------------------------- fixtures
def write_coco(root: Path, split: str = "train", n: int = 3) -> None:
    """``n`` images, each with one VOC-class instance (so data.drop_unlabeled keeps them all)."""
    rng = np.random.default_rng(0)
    (root / split).mkdir(parents=True)
    images, anns = [], []
    for k in range(n):
        name = f"{k:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (H, W, 3)).astype(np.uint8)).save(root / split / name)
        images.append({"id": k + 1, "file_name": name, "height": H, "width": W, "license": 1})
        anns.append({"id": 100 + k, "image_id": k + 1, "category_id": (PERSON, DOG, CAT)[k % 3],
                     "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "area": 100.0, "iscrowd": 0,
                     "bbox": [2, 2, 10, 10]})
    cats = [{"id": c, "name": str(c), "supercategory": ""} for c in COCO80_IDS]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


@pytest.fixture(scope="module")
def voc_src(tmp_path_factory) -> Path:
    from s2c.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", n_train=3, n_val=2, size=40, seed=0)


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco"
    write_coco(root)
    return root


# -------------------------------------------------------------------------------- mutations
@dataclass
class Case:
    what: str       # the mutation, for messages
    name: str       # what a message must name (file name or id)
    expect: str     # "dag": refused by the DAG-build check; "job": refused no later than the jobs'
                    # reads; "handled": read as documented (check in ``verify``)
    verify: object = None


def _image_mutation(path: Path, kind: str, draw) -> Case:
    img = np.asarray(Image.open(path).convert("RGB"))
    name = path.name
    if kind == "missing":
        path.unlink()
        return Case(kind, path.stem, "dag")
    if kind == "0-byte":
        path.write_bytes(b"")
        return Case(kind, path.stem, "dag")
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * draw(st.floats(0.05, 0.8)))])
        return Case(kind, path.stem, "job")
    if kind == "grey":
        Image.fromarray(img).convert("L").save(path, "JPEG")
        grey = np.asarray(Image.open(path))
        return Case(kind, name, "handled", lambda ds, i: np.array_equal(ds.load_image(i), np.stack([grey] * 3, -1)))
    if kind == "cmyk":
        Image.fromarray(img).convert("CMYK").save(path, "JPEG")
        return Case(kind, name, "handled", lambda ds, i: ds.load_image(i).shape == img.shape)
    if kind == "16-bit":
        grey = draw(st.integers(0, 255))
        Image.fromarray(np.full(img.shape[:2], grey * 257, np.uint16)).save(path, "PNG")  # a PNG under .jpg
        return Case(kind, name, "handled", lambda ds, i: (ds.load_image(i) == grey).all())
    if kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = draw(st.sampled_from([3, 6, 8]))  # orientation: 180, 90 cw, 90 ccw
        Image.fromarray(img).save(path, "JPEG", exif=exif, quality=95)
        return Case(kind, name, "handled", lambda ds, i: ds.load_image(i).shape == img.shape)  # stored grid
    if kind == "other size":
        Image.fromarray(np.zeros((img.shape[0] + 3, img.shape[1], 3), np.uint8)).save(path, "JPEG")
        return Case(kind, path.stem, "job")  # the GT map (VOC mask, COCO annotation) no longer fits
    raise AssertionError(kind)


IMAGE_KINDS = ["missing", "0-byte", "truncated", "grey", "cmyk", "16-bit", "exif-rotated", "other size"]

#: keys of a COCO entry the reader needs (dropping or mistyping one must stop the DAG build)
COCO_REQUIRED = {"images": {"id", "file_name", "height", "width"},
                 "annotations": {"id", "image_id", "category_id", "segmentation"},
                 "categories": {"id"}}
#: keys the reader also checks when present
COCO_TYPED = {"annotations": {"area", "iscrowd"}}
#: never a valid value of a key the reader checks (1.5 is a valid area)
_WRONG = st.sampled_from([None, "x", 1.5, [], {}, True])


def coco_mutation(root: Path, draw) -> Case:
    ann = root / "annotations" / "instances_train.json"
    blob = json.loads(ann.read_text())
    kind = draw(st.sampled_from(["drop key", "wrong type", "duplicate id", "orphan annotation", "empty split",
                                 "image file", "bad segmentation"]))
    if kind == "image file":
        im = draw(st.sampled_from(blob["images"]))
        return _image_mutation(root / "train" / im["file_name"], draw(st.sampled_from(IMAGE_KINDS)), draw)
    section = draw(st.sampled_from(["images", "annotations", "categories"]))
    entries = blob[section]
    k = draw(st.integers(0, len(entries) - 1))
    if kind == "drop key":
        key = draw(st.sampled_from(sorted(entries[k])))
        del entries[k][key]
        expect = "dag" if key in COCO_REQUIRED[section] else "handled"
    elif kind == "wrong type":
        key = draw(st.sampled_from(sorted(entries[k])))
        value = draw(_WRONG)
        entries[k][key] = value
        checked = COCO_REQUIRED[section] | COCO_TYPED.get(section, set())
        expect = "dag" if key in checked and not (key == "area" and value == 1.5) else "handled"
        if key == "file_name" and isinstance(value, str):  # a well-formed name of a file that is not there
            ann.write_text(json.dumps(blob))
            return Case(f"{kind} {section}[{k}].file_name", value, "dag")
    elif kind == "duplicate id":
        j = draw(st.integers(0, len(entries) - 1).filter(lambda j: j != k))
        entries[k]["id"] = entries[j]["id"]
        expect = "dag"
    elif kind == "orphan annotation":
        blob["annotations"][k % len(blob["annotations"])]["image_id"] = 999
        expect = "dag"
    elif kind == "empty split":
        blob["images"], blob["annotations"] = [], []
        expect = "dag"
    else:  # not COCO's shape (DAG build), or numbers pycocotools cannot read (the job reading the mask)
        seg, expect = draw(st.sampled_from([([[1, 2]], "dag"), ([], "dag"), ({"size": [H, W]}, "dag"),
                                            ([["a", "b", "c", "d", "e", "f"]], "job")]))
        blob["annotations"][k % len(blob["annotations"])]["segmentation"] = seg
    ann.write_text(json.dumps(blob))
    return Case(f"{kind} {section}[{k}]", ann.name, expect)


def voc_mutation(root: Path, draw) -> Case:
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    ids = lst.read_text().split()
    kind = draw(st.sampled_from(["image file", "mask other size", "mask unknown id", "mask rgb",
                                 "empty split", "duplicate id", "unknown id", "xml broken", "xml unknown class"]))
    i = draw(st.sampled_from(ids))
    mask = root / "SegmentationClassAug" / f"{i}.png"
    if kind == "image file":
        return _image_mutation(root / "JPEGImages" / f"{i}.jpg", draw(st.sampled_from(IMAGE_KINDS)), draw)
    if kind == "mask other size":
        m = np.asarray(Image.open(mask))
        Image.fromarray(np.zeros((m.shape[0], m.shape[1] + 2), np.uint8), mode="L").save(mask)
        return Case(kind, mask.name, "job")
    if kind == "mask unknown id":
        m = np.array(Image.open(mask))
        m[0, 0] = draw(st.integers(22, 254))
        Image.fromarray(m, mode="L").save(mask)
        return Case(kind, mask.name, "job")
    if kind == "mask rgb":
        Image.fromarray(np.zeros((*np.asarray(Image.open(mask)).shape, 3), np.uint8)).save(mask)
        return Case(kind, mask.name, "job")
    if kind == "empty split":
        lst.write_text("")
        return Case(kind, lst.name, "dag")
    if kind == "duplicate id":
        lst.write_text("\n".join([*ids, i]) + "\n")
        return Case(kind, lst.name, "dag")
    if kind == "unknown id":
        lst.write_text("\n".join([*ids, "no_such_image"]) + "\n")
        return Case(kind, "no_such_image", "dag")
    xml = root / "Annotations" / f"{i}.xml"
    if kind == "xml broken":
        xml.write_text(xml.read_text()[: len(xml.read_text()) // 2])
    else:
        xml.write_text(xml.read_text().replace("<name>", "<name>zz", 1))
    return Case(kind, xml.name, "job")


# ------------------------------------------------------------------------------- the property
def _one_line(msg: str, case: Case, where: str):
    assert "\n" not in msg.strip(), f"{case.what}: a multi-line {where} message:\n{msg}"
    assert case.name in msg, f"{case.what}: the {where} message does not name {case.name}: {msg}"


def run_through(data_cfg: dict, splits: list[str], case: Case):
    """The DAG-build check, then each split opened and read as the jobs read it."""
    try:
        report = check_layout(data_cfg, splits[:1], splits, quick=True)
    except Exception as e:  # noqa: BLE001 - inside the DAG build this would be a traceback
        raise AssertionError(f"{case.what}: the DAG-build check raised {type(e).__name__}: {e}") from e
    if report["problems"]:
        text = " ".join(f"{p['what']} {p['where']} {p['how']}" for p in report["problems"])
        assert case.expect != "handled", f"{case.what}: documented handling, but the check refused: {text}"
        assert case.name in text, f"{case.what}: the DAG-build check does not name {case.name}: {text}"
        return "dag"
    assert case.expect != "dag", f"{case.what}: passed the DAG-build check (a job would meet it)"
    try:
        for split in splits:
            ds = open_dataset(data_cfg, split)
            for i in ds.ids:
                ds.load_image(i)
                ds.labels(i)
                if ds.has_masks:
                    ds.load_mask(i)
    except S2CError as e:
        assert case.expect == "job", f"{case.what}: documented handling, but: {e}"
        _one_line(str(e), case, "job")
        return "job"
    except Exception as e:  # noqa: BLE001 - a traceback in a job's log
        raise AssertionError(f"{case.what}: {type(e).__name__} instead of an s2c error: {e}") from e
    assert case.expect == "handled", f"{case.what}: read without an error"
    return ds


def _fresh(src: Path, tmp: Path) -> Path:
    root = tmp / "data"
    shutil.copytree(src, root)
    return root


def check_coco(src: Path, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(src, Path(tmp))
        n = len(open_dataset({"kind": "coco", "root": str(root), "cache_dir": f"{tmp}/c"}, "train").ids)
        case = coco_mutation(root, data.draw)
        cfg = {"kind": "coco", "root": str(root), "class_set": "voc20", "cache_dir": f"{tmp}/cache"}
        ds = run_through(cfg, ["train"], case)
        if case.expect == "handled":
            # images whose only instance stopped counting (area <= 0) are data.drop_unlabeled's, logged
            every = open_dataset({**cfg, "drop_unlabeled": False}, "train")
            assert len(every.ids) == n, f"{case.what}: the split lost images silently"
            if case.verify:
                assert all(case.verify(ds, i) for i in ds.ids if Path(ds.image_path(i)).name == case.name), case.what


def check_voc(src: Path, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = _fresh(src, Path(tmp))
        case = voc_mutation(root, data.draw)
        cfg = {"kind": "voc", "root": str(root), "class_set": "voc20", "cache_dir": f"{tmp}/cache"}
        ds = run_through(cfg, ["train", "val"], case)
        if case.expect == "handled":
            ds = open_dataset(cfg, "train")
            assert len(ds.ids) == len((root / "ImageSets/Segmentation/train.txt").read_text().split())
            if case.verify:
                assert all(case.verify(ds, i) for i in ds.ids if f"{i}.jpg" == case.name), case.what


@settings(max_examples=EXAMPLES, **FUZZ)
@given(data=st.data())
def test_fuzz_coco_mutations(coco_src, data):
    check_coco(coco_src, data)


@settings(max_examples=EXAMPLES, **FUZZ)
@given(data=st.data())
def test_fuzz_voc_mutations(voc_src, data):
    check_voc(voc_src, data)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **FUZZ)
@given(data=st.data())
def test_fuzz_long_coco_mutations(coco_src, data):
    check_coco(coco_src, data)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **FUZZ)
@given(data=st.data())
def test_fuzz_long_voc_mutations(voc_src, data):
    check_voc(voc_src, data)


# ------------------------------------------------------------------- named cases, in-process
def test_coco_image_entry_without_file_name_names_the_json(coco_src, tmp_path):
    root = _fresh(coco_src, tmp_path)
    ann = root / "annotations" / "instances_train.json"
    blob = json.loads(ann.read_text())
    del blob["images"][1]["file_name"]
    ann.write_text(json.dumps(blob))
    with pytest.raises(S2CError, match=r"instances_train\.json: images\[1\] \(id 2\) has no 'file_name'"):
        open_dataset({"kind": "coco", "root": str(root)}, "train")


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_missing_images_and_skip_corrupt_at_the_dag_check(coco_src, tmp_path, skip_corrupt):
    """data.skip_corrupt drops missing images in the readers: the DAG-build check agrees."""
    root = _fresh(coco_src, tmp_path)
    (root / "train" / "000000000001.jpg").unlink()
    cfg = {"kind": "coco", "root": str(root), "skip_corrupt": skip_corrupt, "cache_dir": str(tmp_path / "c")}
    report = check_layout(cfg, ["train"], [], quick=True)
    assert report["ok"] == skip_corrupt, report
    if skip_corrupt:
        assert len(open_dataset(cfg, "train").ids) == 2


def test_the_dag_check_parses_the_json_once_per_edit(coco_src, tmp_path, monkeypatch):
    import s2c.data.coco as coco

    root = _fresh(coco_src, tmp_path)
    cfg = {"kind": "coco", "root": str(root), "cache_dir": str(tmp_path / "c")}
    calls = []
    real = coco.read_coco_json
    monkeypatch.setattr(coco, "read_coco_json", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert check_layout(cfg, ["train"], [], quick=True)["ok"]
    assert len(calls) == 1
    ann = root / "annotations" / "instances_train.json"
    blob = json.loads(ann.read_text())
    del blob["images"][0]["height"]
    ann.write_text(json.dumps(blob))
    assert "has no positive integer 'height'" in str(check_layout(cfg, ["train"], [], quick=True)["problems"])
    assert len(calls) == 2


# ---------------------------------------------------------------- named cases, at the DAG build
def smk(*args):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _coco_config(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for split in ("train", "val"):
        write_coco(root, split)
    cfg = yaml.safe_load((REPO / "config/coco_mini.yaml").read_text())
    cfg["data"]["root"] = str(root)
    cfg["data"]["cache_dir"] = str(tmp_path / "meta")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _edit_json(root: Path, split: str, edit):
    ann = root / "annotations" / f"instances_{split}.json"
    blob = json.loads(ann.read_text())
    edit(blob)
    ann.write_text(json.dumps(blob))


@pytest.mark.parametrize("breakage,needle", [
    ("no file_name", "images[1] (id 2) has no 'file_name'"),
    ("image deleted", "1 of 3 images of split 'train': 000000000002.jpg"),
], ids=["entry-without-file_name", "image-file-deleted"])
def test_eval_coco_stops_at_the_dag_build(tmp_path, breakage, needle):
    cfg = _coco_config(tmp_path)
    root = tmp_path / "coco"
    if breakage == "no file_name":
        _edit_json(root, "train", lambda b: b["images"][1].pop("file_name"))
    else:
        (root / "train" / "000000000002.jpg").unlink()
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"), "-n", "--cores", "1", "eval_coco",
              "--configfile", str(cfg))
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "dataset check (s2c prepare" in text and needle in text, text
    assert "sam_embed" not in text and "Traceback" not in text, text


def test_eval_coco_builds_on_the_intact_fixture(tmp_path):
    """The fixture the two refusals above break is itself accepted (the refusals are the breakage's)."""
    cfg = _coco_config(tmp_path)
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"), "-n", "--cores", "1", "eval_coco",
              "--configfile", str(cfg))
    assert out.returncode == 0 and "sam_embed" in out.stdout, out.stdout + out.stderr
