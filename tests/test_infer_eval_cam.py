"""infer_cam on the synthetic VOC fixture with a random classifier; eval_cam → pseudo_labels →
eval_pseudo CLIs end to end; figures; error paths."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from s2c.stages import eval_cam, eval_pseudo, figures, infer_cam, pseudo_labels
from s2c.data import open_dataset
from s2c.errors import S2CError
from s2c.io import save_label_png
from s2c.stages.infer_cam import CAMStore, infer_cams, multiscale_cams

CAM_CFG = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 32, "freeze_bn": False}
# few/small scales keep the random model cheap on the shared CPU; the multi-scale path is the same
FAST = {"scales": [0.5, 1.0], "flip": True}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from s2c.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier(CAM_CFG, 20)
    with torch.no_grad():
        # a random efficientnet's features are ~1e-7; scale F so the CAMs are O(1) like a trained
        # model's, otherwise the reference's +1e-5 in the max-normalisation dominates
        model.proj.weight.mul_(1e7)
        # non-negative class weights on the ReLU features F: every CAM is positive somewhere, so
        # max-normalisation is observable for every class
        model.classifier.weight.abs_()
    path = tmp_path_factory.mktemp("model") / "cam.pt"
    torch.save({"model": model.state_dict(), "cam_cfg": CAM_CFG, "num_classes": 20, "class_set": "voc20"}, path)
    return path


@pytest.fixture(scope="module")
def data_cfg(synthetic_voc):
    return {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20"}


@pytest.fixture(scope="module")
def train_store(model_file, data_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("cams") / "cams_train.h5"
    infer_cams(model_file, data_cfg, "train", out, {"scales": [1.0]}, device="cpu", progress=False)
    return out


def test_store_layout_dtype_and_normalisation(train_store, data_cfg):
    ds = open_dataset(data_cfg, "train")
    with h5py.File(train_store, "r") as f:
        assert f.attrs["split"] == "train" and int(f.attrs["format_version"]) == infer_cam.STORE_VERSION
        assert list(f.attrs["ids"]) == ds.ids
        assert f["images"][ds.ids[0]]["cams"].dtype == np.float16
    store = CAMStore(train_store)
    assert store.ids == ds.ids and store.num_classes == 20
    for image_id in ds.ids:
        cams, classes = store.get(image_id)
        H, W = ds.load_image(image_id).shape[:2]
        # only the labelled classes, in ascending order
        np.testing.assert_array_equal(classes, np.flatnonzero(ds.labels(image_id)))
        assert cams.shape == (classes.size, H, W)
        assert cams.min() >= 0.0
        peaks = cams.reshape(classes.size, -1).max(1)
        # each class divided by its own max (+1e-5 as in the reference; fp16 storage): peak ≈ 1
        np.testing.assert_allclose(peaks, 1.0, atol=2e-3)
    store.close()


def test_multiscale_cams_with_flip_is_flip_equivariant(model_file):
    model, _ = infer_cam.load_classifier(model_file)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 54, 3), dtype=np.uint8)
    a = multiscale_cams(model, img, [3, 11], scales=[0.75, 1.0], flip=True)
    b = multiscale_cams(model, img[:, ::-1].copy(), [3, 11], scales=[0.75, 1.0], flip=True)
    assert a.shape == (2, 40, 54) and a.dtype == np.float32
    np.testing.assert_allclose(b, a[:, :, ::-1], atol=1e-4)
    assert multiscale_cams(model, img, [], scales=[1.0]).shape == (0, 40, 54)


def test_end_to_end_clis(model_file, data_cfg, tmp_path, capsys):
    dc = json.dumps(data_cfg)
    store = tmp_path / "cams_val.h5"
    assert infer_cam.main(["--model", str(model_file), "--data-cfg", dc, "--split", "val", "--out", str(store),
                           "--cfg", json.dumps(FAST), "--device", "cpu", "--no-progress"]) == 0
    cam_json, bar = tmp_path / "metrics" / "cam_val.json", tmp_path / "cam_bar.png"
    assert eval_cam.main(["--cams", str(store), "--data-cfg", dc, "--split", "val", "--out", str(cam_json),
                          "--cfg", "{}", "--bar", str(bar), "--no-progress"]) == 0
    r = json.loads(cam_json.read_text())
    assert {"miou", "iou", "threshold", "n_images"} <= set(r)
    assert r["n_images"] == 4 and r["threshold"] in [round(0.05 * i, 2) for i in range(1, 20)]
    assert list(r["iou"])[0] == "background" and len(r["iou"]) == 21
    assert r["miou"] == max(v for v in r["miou_by_threshold"].values() if v is not None)

    pl = tmp_path / "pseudo"
    assert pseudo_labels.main(["--cams", str(store), "--threshold-json", str(cam_json), "--data-cfg", dc,
                               "--split", "val", "--out", str(pl), "--cfg", '{"refine": "none"}',
                               "--no-progress"]) == 0
    ds = open_dataset(data_cfg, "val")
    assert sorted(p.stem for p in pl.glob("*.png")) == sorted(ds.ids)
    with Image.open(pl / f"{ds.ids[0]}.png") as im:
        assert im.mode == "P" and im.size[::-1] == ds.load_image(ds.ids[0]).shape[:2]
    lab_json = tmp_path / "metrics" / "pseudo_val.json"
    assert eval_pseudo.main(["--pred", str(pl), "--data-cfg", dc, "--split", "val", "--out", str(lab_json),
                             "--bar", str(tmp_path / "pl_bar.png"), "--no-progress"]) == 0
    r2 = json.loads(lab_json.read_text())
    assert set(r2) == {"miou", "iou", "n_images", "floors", "above_floor"}  # no threshold: a label folder has none
    # pseudo-labels at the searched threshold are exactly eval_cam's best prediction
    assert r2["miou"] == pytest.approx(r["miou"]) and r2["iou"] == r["iou"]
    for png in (bar, tmp_path / "pl_bar.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100

    # figures CLI: CAM overlays and image | GT | label panels
    assert figures.main(["cams", "--cams", str(store), "--data-cfg", dc, "--split", "val", "--n", "2",
                         "--out", str(tmp_path / "cams.png")]) == 0
    assert figures.main(["labels", "--pred", str(pl), "--data-cfg", dc, "--split", "val", "--n", "2",
                         "--out", str(tmp_path / "labels.png")]) == 0
    assert figures.main(["bars", "--metrics", str(lab_json), "--out", str(tmp_path / "bars.png")]) == 0
    for name in ("cams.png", "labels.png", "bars.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"


def test_eval_cam_store_must_cover_the_split(train_store, data_cfg, tmp_path):
    # a store of another split lacks the ids; a superset split (train_aug ⊃ train) would be fine
    with pytest.raises(S2CError, match="lacks 4 image"):
        eval_cam.evaluate_cams(train_store, data_cfg, "val", tmp_path / "x.json", progress=False)


def test_missing_gt_names_the_file(data_cfg, synthetic_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(synthetic_voc, root)
    cfg = dict(data_cfg, root=str(root))
    ds = open_dataset(cfg, "val")
    # a label map per id at the image size, then one GT file removed
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ds.ids:
        save_label_png(np.zeros(ds.load_image(i).shape[:2], np.uint8), pred / f"{i}.png")
    gt_file = ds.gt_dir / f"{ds.ids[1]}.png"
    gt_file.unlink()
    with pytest.raises(S2CError, match=str(gt_file)):
        eval_pseudo.evaluate_labels(pred, cfg, "val", tmp_path / "m.json", progress=False)


def test_missing_prediction_and_cli_exit_code(data_cfg, tmp_path, capsys):
    ds = open_dataset(data_cfg, "val")
    pred = tmp_path / "pred"
    pred.mkdir()
    save_label_png(np.zeros(ds.load_image(ds.ids[0]).shape[:2], np.uint8), pred / f"{ds.ids[0]}.png")
    with pytest.raises(SystemExit) as e:
        eval_pseudo.main(["--pred", str(pred), "--data-cfg", json.dumps(data_cfg), "--split", "val",
                          "--out", str(tmp_path / "m.json"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "s2c: error:" in err and f"{ds.ids[1]}.png" in err
    assert not (tmp_path / "m.json").exists()


def test_infer_cam_errors(model_file, data_cfg, tmp_path):
    with pytest.raises(S2CError, match="model file not found"):
        infer_cams(tmp_path / "none.pt", data_cfg, "val", tmp_path / "c.h5", device="cpu")
    with pytest.raises(S2CError, match="unknown config key"):
        infer_cams(model_file, data_cfg, "val", tmp_path / "c.h5", {"scale": [1]}, device="cpu")
    with pytest.raises(S2CError, match="CAM store not found"):
        CAMStore(tmp_path / "c.h5")


def test_training_long_side_range_from_model_meta():
    from s2c.stages.infer_cam import training_long_side_range

    assert training_long_side_range({"cam_cfg": {"augment": {"resize_long": [256, 384], "crop_size": 256}}}) == (256, 384)
    assert training_long_side_range({"cam_cfg": {"augment": {}}}) == (256, 512)  # the reference default
    assert training_long_side_range({}) == (256, 512)
    assert training_long_side_range({"cam_cfg": {"augment": {"resize_long": "x"}}}) is None
