"""eval_seg: test-time augmentation, prediction PNGs, metrics JSON, CRF and error paths."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from s2c.data import open_dataset
from s2c.errors import S2CError
from s2c.stages.eval_seg import CRF_DEFAULTS, eval_seg, load_seg_model, main, predict_probs
from s2c.io import read_label_png
from s2c.metrics import confusion_matrix, miou_from_confusion
from s2c.refine.crf import dense_crf
from s2c.models import build_deeplab
from s2c.stages.train_seg import resolve_cfg

TINY = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "head": "v3plus"}
PAPER_TTA = {"scales": [0.5, 0.75, 1.0, 1.25, 1.5], "flip": True, "num_workers": 0}


def _save_model(path, class_set="voc20", K=21, seed=0):
    """A model.pt as train_seg writes it, with random (seeded) weights."""
    torch.manual_seed(seed)
    cfg = resolve_cfg(TINY)
    model = build_deeplab(cfg, K, None)
    torch.save({"model": model.state_dict(), "seg_cfg": cfg, "num_classes": K, "class_set": class_set}, path)
    return path


@pytest.fixture(scope="module")
def setup(synthetic_voc, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_seg")
    return _save_model(d / "model.pt"), {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20"}


def test_writes_pngs_and_metrics_consistent_with_them(setup, tmp_path):
    model_path, data_cfg = setup
    m = eval_seg(model_path, data_cfg, "val", tmp_path / "seg_val.json", tmp_path / "pred", PAPER_TTA, "cpu")
    on_disk = json.loads((tmp_path / "seg_val.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert {"miou", "iou", "n_images"} <= set(m)
    ds = open_dataset(data_cfg, "val")
    assert m["n_images"] == len(ds.ids) == 4
    assert list(m["iou"]) == ["background", *ds.class_names]
    # The JSON is the mIoU of exactly the PNGs written (one confusion matrix over the split).
    assert sorted(p.stem for p in (tmp_path / "pred").iterdir()) == sorted(ds.ids)
    cm = 0
    for i in ds.ids:
        pred = read_label_png(tmp_path / "pred" / f"{i}.png")
        assert pred.shape == ds.load_image(i).shape[:2] and pred.max() <= 20
        cm = cm + confusion_matrix(pred, ds.load_mask(i), 21)
    assert m["miou"] == pytest.approx(100 * miou_from_confusion(cm), abs=1e-3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporaries left


class _Conv(nn.Module):
    """Not flip-equivariant and scale-dependent: (B,3,H,W) → (B,4,H,W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 5, padding=2)

    def forward(self, x):
        return self.conv(x) * 3


def test_predict_probs_shapes_and_flip_averaging():
    model = _Conv().eval()
    img = torch.randn(3, 37, 53)
    single = predict_probs(model, img)
    torch.testing.assert_close(single, model(img[None])[0].softmax(0))
    for scales in ([1.0], [0.5, 0.75, 1.0, 1.25, 1.5]):
        p = predict_probs(model, img, scales, flip=True)
        assert p.shape == (4, 37, 53)
        torch.testing.assert_close(p.sum(0), torch.ones(37, 53))
        # averaging an image with its mirror makes the result mirror-equivariant
        torch.testing.assert_close(predict_probs(model, img.flip(-1), scales, flip=True).flip(-1), p)
    assert not torch.allclose(predict_probs(model, img, flip=True), single)


def test_deeplab_multiscale_output_at_image_size(setup):
    model, meta = load_seg_model(setup[0])
    assert meta["num_classes"] == 21 and "model" not in meta
    p = predict_probs(model, torch.randn(3, 45, 61), [0.5, 1.0, 1.5], flip=True)
    assert p.shape == (21, 45, 61) and torch.isfinite(p).all()


def test_crf_refinement(setup, tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 200
    probs = np.full((2, 20, 30), 0.5, np.float32)
    probs[0] += rng.uniform(-0.25, 0.25, (20, 30)).astype(np.float32)
    probs[0, :, :15] += 0.1  # left half mildly prefers class 0, right half class 1
    probs[0, :, 15:] -= 0.1
    probs[1] = 1 - probs[0]
    truth = np.zeros((20, 30), np.int64)
    truth[:, 15:] = 1
    assert (probs.argmax(0) != truth).sum() > 30  # the unaries alone are noisy
    q = dense_crf(image, probs, **CRF_DEFAULTS)  # eval_seg's settings
    assert q.shape == (2, 20, 30)
    # the bilateral kernel cleans them into the two colour regions
    assert (q.argmax(0) == truth).all()
    model_path, data_cfg = setup
    m = eval_seg(model_path, data_cfg, "val", tmp_path / "m.json", None,
                 {"crf": {"iters": 2}, "num_workers": 0}, "cpu")
    assert m["crf"] is True and m["n_images"] == 4


def test_crf_unavailable_or_misconfigured(setup, tmp_path, monkeypatch):
    model_path, data_cfg = setup
    with pytest.raises(S2CError, match=r"eval_seg\.crf\.sxy"):
        eval_seg(model_path, data_cfg, "val", tmp_path / "m.json", None, {"crf": {"sxy": 3}}, "cpu")
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(S2CError, match="pip install pydensecrf2"):
        eval_seg(model_path, data_cfg, "val", tmp_path / "m.json", tmp_path / "pred", {"crf": True}, "cpu")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "pred").exists()


def test_class_set_mismatch_is_refused(setup, tmp_path):
    _, data_cfg = setup
    coco_model = _save_model(tmp_path / "coco.pt", "coco80", 81)
    with pytest.raises(S2CError, match="class_set 'coco80'.*data.class_set is 'voc20'"):
        eval_seg(coco_model, data_cfg, "val", tmp_path / "m.json", None, {}, "cpu")


def test_cli(setup, tmp_path, capsys):
    model_path, data_cfg = setup
    rc = main(["--model", str(model_path), "--data-cfg", json.dumps(data_cfg), "--split", "val",
               "--out-json", str(tmp_path / "seg_val.json"), "--out-dir", str(tmp_path / "pred"),
               "--cfg", '{"num_workers": 0}', "--device", "cpu"])
    assert rc == 0 and "mIoU" in capsys.readouterr().out
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "missing.pt"), "--data-cfg", json.dumps(data_cfg), "--split", "val",
              "--out-json", str(tmp_path / "x.json"), "--device", "cpu"])
    assert e.value.code == 2 and "segmentation model not found" in capsys.readouterr().err
