"""External CAMs and pseudo-labels (s2c.cam_import, s2c import_cams): each format read from
files written the way its code writes them, the round trip through export, and one-line errors
for bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from s2c.stages import import_cams as stage
from s2c.cam_import import CAM_FORMATS, export_cams, import_cams, import_pseudo_labels
from s2c.cam_store import CAMStore, write_cam_store
from s2c.data import open_dataset
from s2c.stages.eval_cam import evaluate_cams
from s2c.errors import S2CError

SPLIT = "val"


@pytest.fixture(scope="module")
def data_cfg(synthetic_voc):
    return {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20"}


@pytest.fixture(scope="module")
def ds(data_cfg):
    return open_dataset(data_cfg, SPLIT)


def _maps(ds, image_id):
    """Deterministic CAM-like maps of the labelled classes: the GT region plus a ramp, in [0, 1]."""
    gt = ds.load_mask(image_id)
    classes = np.flatnonzero(ds.labels(image_id))
    h, w = gt.shape
    ramp = np.linspace(0, 0.3, w, dtype=np.float32)[None].repeat(h, 0)
    cams = np.stack([np.clip((gt == c + 1) * 0.7 + ramp, 0, 1) for c in classes]).astype(np.float16)
    return cams.astype(np.float32), classes


@pytest.fixture(scope="module")
def store(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "cams.h5"
    with write_cam_store(out, {"split": SPLIT, "class_names": list(ds.class_names), "ids": ds.ids}) as put:
        for i in ds.ids:
            put(i, *_maps(ds, i))
    return out


def write_native(fmt, ds, folder):
    """A folder written as each code writes it (not through s2c's exporter)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in ds.ids:
        cams, classes = _maps(ds, i)
        if fmt == "irn":  # make_cam.py: keys, strided torch tensor, high_res numpy
            np.save(folder / f"{i}.npy", {"keys": torch.from_numpy(classes).numpy(),
                                           "cam": torch.from_numpy(cams[:, ::4, ::4].copy()),
                                           "high_res": cams})
        elif fmt == "clip_es":
            np.save(folder / f"{i}.npy", {"keys": classes, "attn_highres": cams.astype(np.float16)})
        elif fmt == "mctformer":
            np.save(folder / f"{i}.npy", {int(c): m for c, m in zip(classes, cams)})
        elif fmt == "plain":  # the .npy variant: one map per labelled class, ascending
            np.save(folder / f"{i}.npy", cams)
    return folder


def _assert_same(a, b, ids):
    sa, sb = CAMStore(a), CAMStore(b)
    for i in ids:
        ca, ka = sa.get(i)
        cb, kb = sb.get(i)
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(ca, cb)


@pytest.mark.parametrize("fmt", CAM_FORMATS)
def test_native_files_import_to_the_same_store(fmt, ds, store, tmp_path):
    folder = write_native(fmt, ds, tmp_path / fmt)
    out = import_cams(folder, fmt, ds, tmp_path / "imported.h5", progress=False)
    _assert_same(store, out, ds.ids)
    assert CAMStore(out).attrs["source_format"] == fmt


@pytest.mark.parametrize("fmt", CAM_FORMATS)
def test_export_import_round_trip_gives_the_same_eval_cam(fmt, ds, data_cfg, store, tmp_path):
    folder = export_cams(store, fmt, tmp_path / "exported", progress=False)
    out = import_cams(folder, fmt, ds, tmp_path / "back.h5", progress=False)
    _assert_same(store, out, ds.ids)
    a = evaluate_cams(store, data_cfg, SPLIT, tmp_path / "a.json", progress=False)
    b = evaluate_cams(out, data_cfg, SPLIT, tmp_path / "b.json", progress=False)
    assert a["miou"] == b["miou"] and a["threshold"] == b["threshold"]


def test_plain_npz_and_dense_npy(ds, store, tmp_path):
    dense = tmp_path / "dense"
    dense.mkdir()
    for i in ds.ids:
        cams, classes = _maps(ds, i)
        full = np.zeros((ds.num_classes, *cams.shape[1:]), np.float32)
        full[classes] = cams
        np.save(dense / f"{i}.npy", full)
    _assert_same(store, import_cams(dense, "plain", ds, tmp_path / "d.h5", progress=False), ds.ids)


def test_normalize_divides_by_the_max(ds, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in ds.ids:
        cams, classes = _maps(ds, i)
        np.save(folder / f"{i}.npy", {"keys": classes, "high_res": cams * 7.0})
    with pytest.raises(S2CError, match=r"not \[0, 1\].*external.normalize"):
        import_cams(folder, "irn", ds, tmp_path / "x.h5", progress=False)
    out = import_cams(folder, "irn", ds, tmp_path / "x.h5", normalize=True, progress=False)
    c, _ = CAMStore(out).get(ds.ids[0])
    assert 0.99 <= c.max() <= 1.0


def _break(kind, ds, folder):
    i = ds.ids[1]
    cams, classes = _maps(ds, i)
    if kind == "missing":
        (folder / f"{i}.npy").unlink()
    elif kind == "size":
        np.save(folder / f"{i}.npy", {"keys": classes, "high_res": cams[:, :-3]})
    elif kind == "classes":
        np.save(folder / f"{i}.npy", {"keys": (classes + 1) % ds.num_classes, "high_res": cams})
    elif kind == "unreadable":
        (folder / f"{i}.npy").write_bytes(b"not a numpy file")
    elif kind == "format":
        np.save(folder / f"{i}.npy", {"keys": classes, "attn_highres": cams})
    return folder / f"{i}.npy"


@pytest.mark.parametrize("kind,msg", [("missing", "is missing"), ("size", "but the image is"),
                                      ("classes", "but the image is labelled"), ("unreadable", "cannot read"),
                                      ("format", "not in the 'irn' format")])
def test_bad_folder_one_line_error_naming_the_file(kind, msg, ds, data_cfg, tmp_path, capsys):
    folder = write_native("irn", ds, tmp_path / "irn")
    bad = _break(kind, ds, folder)
    out = tmp_path / "o.h5"
    with pytest.raises(SystemExit) as e:
        stage.main(["cams", "--source", str(folder), "--format", "irn", "--data-cfg", json.dumps(data_cfg),
                    "--split", SPLIT, "--out", str(out), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("s2c: error: ") and len(err.splitlines()) == 1, err
    assert str(bad) in err and msg in err, err
    assert not out.exists()  # nothing that looks complete


def test_not_a_folder(ds, tmp_path):
    with pytest.raises(S2CError, match="is not a directory"):
        import_cams(tmp_path / "nope", "irn", ds, tmp_path / "o.h5", progress=False)


def _write_gt_pngs(ds, folder):
    folder.mkdir()
    for i in ds.ids:
        Image.fromarray(ds.load_mask(i)).save(folder / f"{i}.png")
    return folder


def test_pseudo_label_import(ds, tmp_path):
    folder = _write_gt_pngs(ds, tmp_path / "labels")
    out = import_pseudo_labels(folder, ds, tmp_path / "pseudo", progress=False)
    for i in ds.ids:
        with Image.open(out / f"{i}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im), ds.load_mask(i))


@pytest.mark.parametrize("kind,msg", [("missing", "is missing"), ("size", "but its image is"),
                                      ("unlabelled", "not labelled with"), ("unknown", "unknown class id")])
def test_pseudo_label_bad_folder(kind, msg, ds, tmp_path):
    folder = _write_gt_pngs(ds, tmp_path / "labels")
    i = ds.ids[0]
    gt = ds.load_mask(i)
    if kind == "missing":
        (folder / f"{i}.png").unlink()
    elif kind == "size":
        Image.fromarray(gt[:-2]).save(folder / f"{i}.png")
    else:
        absent = next(c for c in range(ds.num_classes) if not ds.labels(i)[c])
        gt = gt.copy()
        gt[:2, :2] = absent + 1 if kind == "unlabelled" else 99
        Image.fromarray(gt).save(folder / f"{i}.png")
    with pytest.raises(S2CError, match=msg) as e:
        import_pseudo_labels(folder, ds, tmp_path / "pseudo", progress=False)
    assert str(folder / f"{i}.png") in str(e.value)
    assert not (tmp_path / "pseudo").exists()
