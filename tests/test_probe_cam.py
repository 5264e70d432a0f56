"""Tests for the probe_cam stage: the head is fitted on frozen features (the backbone untouched),
its model.pt is one cam.init / infer_cam take, and bad settings fail with a clear message."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from s2c.stages import probe_cam as pc
from s2c import cam_training
from s2c.sections import MODEL_KEYS
from s2c.stages import train_cam as tc
from s2c.data import open_dataset
from s2c.errors import S2CError
from s2c.models import CAMClassifier, build_classifier, read_cam_checkpoint

CAM = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16}


def _data(root):
    return {"kind": "voc", "root": str(root), "class_set": "voc20"}


class TinyBackbone(nn.Module):
    """Two stride-4 convs, (B,3,H,W) → (B,16,H/16,W/16): features of a useful size (a random
    Lite0's in eval mode are ~1e-9, below float16's range)."""

    out_channels, output_stride = 16, 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.ReLU(), nn.Conv2d(16, 16, 4, 4), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def test_head_learns_on_frozen_features(synthetic_voc):
    ds = open_dataset(_data(synthetic_voc), "train")
    torch.manual_seed(0)
    model = CAMClassifier(TinyBackbone(), ds.num_classes, feat_dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labels = torch.stack([torch.as_tensor(ds.labels(i)).float() for i in ds.ids])
    feats = pc.frozen_features(model, ds, 64, torch.device("cpu"), progress=False)
    assert len(feats) == len(ds.ids) and feats[0].shape[0] == 2 and feats[0].dtype == torch.float16
    cfg = {**pc.PROBE_DEFAULTS, "steps": 150, "batch_size": 4, "lr": 2.0}
    losses = pc.fit_head(model, feats, labels, cfg, torch.device("cpu"), progress=False)
    assert len(losses) == 150 and sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("proj.", "classifier.")) for k in changed)  # backbone frozen


def test_probe_model_is_a_cam_init(synthetic_voc, tmp_path, capsys):
    out = tmp_path / "probe" / "model.pt"
    assert pc.main(["--data-cfg", json.dumps(_data(synthetic_voc)), "--split", "train",
                    "--cfg", '{"backbone": "efficientnet_lite0", "pretrained": false, "output_stride": 16}',
                    "--probe", '{"long_side": 64, "steps": 5, "batch_size": 2}', "--out", str(out),
                    "--device", "cpu", "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ckpt = read_cam_checkpoint(out)
    assert ckpt["num_classes"] == 20 and ckpt["class_set"] == "voc20" and ckpt["probe"]["steps"] == 5
    assert ckpt["input_norm"]["mean"] != [0.485, 0.456, 0.406]  # Lite0's (x-127)/128, recorded
    cfg = tc.resolve_cfg({**CAM, "init": str(out)})
    model = build_classifier({k: cfg[k] for k in MODEL_KEYS}, 20)
    cam_training.init_from(model, cfg, 20, "voc20")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary left behind


@pytest.mark.parametrize("probe, match", [({"steps": 0}, r"probe\.steps must be a positive integer"),
                                          ({"step": 5}, r"probe\.step"),
                                          ({"long_side": 1.5}, r"probe\.long_side")])
def test_bad_probe_settings_are_clear_errors(synthetic_voc, tmp_path, probe, match):
    with pytest.raises(S2CError, match=match):
        pc.probe_cam(_data(synthetic_voc), "train", tmp_path / "m.pt", cam_cfg=CAM, probe_cfg=probe)
    assert not (tmp_path / "m.pt").exists()


def test_probe_refuses_an_init(synthetic_voc, tmp_path):
    with pytest.raises(S2CError, match="cam.init must be null"):
        pc.probe_cam(_data(synthetic_voc), "train", tmp_path / "m.pt", cam_cfg={**CAM, "init": "x.pt"})
