"""Backbones (EfficientNet-Lite0, torchvision ResNets), CAMClassifier, freeze_bn, DeepLab."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from s2c.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from s2c.errors import S2CError
from s2c.models import CAMClassifier, DeepLab, build_backbone, build_classifier, build_deeplab, freeze_bn
from s2c.models.classifier import EvalBatchNorm2d


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU is shared: one intra-op thread avoids OpenMP spin-waiting against other processes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def effnet_file(weights_dir):
    from s2c.weights import ensure_efficientnet_lite0

    return ensure_efficientnet_lite0(weights_dir)


@pytest.mark.parametrize(
    "name,os_",
    [("efficientnet_lite0", 8), ("efficientnet_lite0", 16), ("efficientnet_lite0", 32),
     ("resnet50", 16), ("resnet101", 8)],
)
def test_backbone_shapes_and_strides(name, os_):
    torch.manual_seed(0)
    b = build_backbone(name, pretrained=False, output_stride=os_).eval()
    assert b.output_stride == os_
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        f = b.forward_features(x)
        out = b(x)
    assert f["out"].shape == (1, b.out_channels, 64 // os_, 32 // os_)
    assert f["low"].shape == (1, b.low_channels, 16, 8)
    torch.testing.assert_close(out, f["out"])


def test_bad_backbone_name_and_stride():
    with pytest.raises(S2CError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16", False, 8)
    with pytest.raises(S2CError, match="output_stride=4"):
        build_backbone("efficientnet_lite0", False, 4)
    with pytest.raises(S2CError, match="output_stride=16"):
        build_backbone("resnet38d", False, 16)


def test_effnet_pretrained_loads_file_tensors(effnet_file, weights_dir):
    ref = torch.load(effnet_file, map_location="cpu")
    torch.manual_seed(0)
    rand = build_backbone("efficientnet_lite0", False, 32).state_dict()
    b = build_backbone("efficientnet_lite0", True, 32, weights_dir)
    sd = b.state_dict()
    # every backbone tensor comes from the file; only the ImageNet classifier is left out
    assert set(ref) - set(sd) == {"_fc.weight", "_fc.bias"}
    assert set(sd) <= set(ref)
    for k, v in sd.items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)
    changed = [k for k in sd if sd[k].dtype.is_floating_point and not torch.equal(sd[k], rand[k])]
    assert len(changed) > 0.9 * sum(v.dtype.is_floating_point for v in sd.values())


def test_effnet_dilation_keeps_weights_changes_stride(weights_dir):
    b32 = build_backbone("efficientnet_lite0", True, 32, weights_dir).eval()
    b8 = build_backbone("efficientnet_lite0", True, 8, weights_dir).eval()
    sd32, sd8 = b32.state_dict(), b8.state_dict()
    assert sd32.keys() == sd8.keys()
    assert all(torch.equal(sd32[k], sd8[k]) for k in sd32)
    # the two stride-2 depthwise convs of stages 4 and 6 became stride 1, later ones dilated
    assert b8._blocks[5]._depthwise_conv.stride == [1, 1]
    assert b8._blocks[11]._depthwise_conv.stride == [1, 1]
    assert b8._blocks[11]._depthwise_conv.dilation == (2, 2)
    assert b8._blocks[12]._depthwise_conv.dilation == (4, 4)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert b32(x).shape[-2:] == (2, 1)
        assert b8(x).shape[-2:] == (8, 4)


def test_effnet_os32_matches_package_model(effnet_file, weights_dir):
    """Undilated, the backbone computes exactly the package's ImageNet feature extractor."""
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(torch.load(effnet_file, map_location="cpu"))
    ref.eval()
    b = build_backbone("efficientnet_lite0", True, 32, weights_dir).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        # the backbone takes ImageNet-normalised input and re-maps it to the Lite weights' (x-127)/128
        raw = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        torch.testing.assert_close(b(x), ref.extract_features((raw * 255 - 127) / 128), atol=1e-4, rtol=1e-4)
        assert b.input_norm() == {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}


def test_pretrained_path_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("efficientnet_lite0", False, 16)
    path = tmp_path / "eff.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    b = build_backbone("efficientnet_lite0", str(path), 16)
    for k, v in src.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    sd = src.state_dict()
    del sd["_blocks.3._bn1.running_var"]
    torch.save(sd, tmp_path / "missing_key.pth")
    with pytest.raises(S2CError, match="does not match the backbone.*_blocks.3._bn1.running_var"):
        build_backbone("efficientnet_lite0", str(tmp_path / "missing_key.pth"), 16)
    sd = src.state_dict()
    sd["_conv_stem.weight"] = sd["_conv_stem.weight"][:8]
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(S2CError, match="'_conv_stem.weight' has shape"):
        build_backbone("efficientnet_lite0", str(tmp_path / "bad_shape.pth"), 16)
    torch.save({"w": 1}, tmp_path / "not_sd.pth")
    with pytest.raises(S2CError, match="not a state dict"):
        build_backbone("efficientnet_lite0", str(tmp_path / "not_sd.pth"), 16)
    with pytest.raises(S2CError, match="not found"):
        build_backbone("resnet50", str(tmp_path / "missing.pth"), 8)


def test_cam_classifier_outputs():
    torch.manual_seed(0)
    m = CAMClassifier(build_backbone("efficientnet_lite0", False, 16), num_classes=5, feat_dim=32)
    out = m(torch.randn(2, 3, 64, 64))
    assert out["feats"].shape == (2, 32, 4, 4)
    assert out["cams"].shape == (2, 5, 4, 4)
    assert out["logits"].shape == (2, 5)
    torch.testing.assert_close(out["logits"], out["cams"].mean((2, 3)))
    assert (out["feats"] >= 0).all()
    assert m.proj.bias is None and m.classifier.bias is None
    # CAMs are the head applied to F (what the CPM/SSC losses rely on)
    torch.testing.assert_close(m.cams_from_features(out["feats"]), out["cams"])


def test_freeze_bn_survives_train_and_blocks_grads():
    torch.manual_seed(0)
    m = build_classifier({"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16,
                          "freeze_bn": True, "freeze_stem": False, "feat_dim": 16}, 3)
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(isinstance(bn, EvalBatchNorm2d) for bn in bns)
    m.train()
    assert m.training and not any(bn.training for bn in bns)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items() if "running" in k}
    out = m(torch.randn(2, 3, 64, 64))
    out["logits"].sum().backward()
    assert all(bn.weight.grad is None and bn.bias.grad is None for bn in bns)
    assert not any(p.requires_grad for bn in bns for p in bn.parameters())
    assert m.proj.weight.grad is not None and m.backbone._conv_head.weight.grad is not None
    after = m.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    # survives copies and pickling (checkpoints of whole models, DataLoader/DDP spawn)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        clone.train()
        assert not any(mod.training for mod in clone.backbone.modules() if isinstance(mod, nn.BatchNorm2d))


def test_without_freeze_bn_bn_trains():
    m = build_classifier({"backbone": "efficientnet_lite0", "pretrained": False, "freeze_bn": False,
                          "freeze_stem": False}, 3)
    m.train()
    assert all(mod.training for mod in m.backbone.modules() if isinstance(mod, nn.BatchNorm2d))
    n_all = sum(1 for p in m.parameters())
    groups = m.param_groups()
    assert sum(len(g["params"]) for g in groups) == n_all


def test_freeze_stem_and_param_groups():
    m = build_classifier({"backbone": "resnet50", "pretrained": False, "freeze_stem": True,
                          "freeze_bn": True, "lr": 0.02, "epochs": 6}, 4)
    assert not m.backbone.conv1.weight.requires_grad
    assert m.backbone.layer1[0].conv1.weight.requires_grad
    groups = {g["name"]: g for g in m.param_groups()}
    assert groups["new"]["lr_mult"] == 1.0 and groups["backbone"]["lr_mult"] == 1.0  # the reference: 1x
    assert {id(p) for p in groups["new"]["params"]} == {id(m.proj.weight), id(m.classifier.weight)}
    bb = {id(p) for p in groups["backbone"]["params"]}
    assert id(m.backbone.conv1.weight) not in bb and id(m.backbone.layer4[0].conv1.weight) in bb
    assert all(p.requires_grad for g in groups.values() for p in g["params"])
    opt = torch.optim.SGD(m.param_groups(10.0), lr=0.1)  # extra keys are accepted by torch optimizers
    assert [g["lr_mult"] for g in opt.param_groups] == [1.0, 10.0]


def test_classifier_cfg_errors():
    with pytest.raises(S2CError, match="cam.output_stride"):
        build_classifier({"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": "eight"}, 3)
    # "8" is how snakemake --config 'cam={output_stride: 8}' hands it over: it means 8
    assert build_classifier({"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": "8"}, 3) is not None
    with pytest.raises(S2CError, match="cam.pretrained"):
        build_classifier({"backbone": "efficientnet_lite0", "pretrained": 1}, 3)
    with pytest.raises(S2CError, match="weights directory"):
        build_classifier({"backbone": "efficientnet_lite0", "pretrained": True}, 3, weights_dir=None)


@pytest.mark.parametrize("head,os_", [("v3", 16), ("v3plus", 8)])
def test_deeplab_output_size(head, os_):
    torch.manual_seed(0)
    m = build_deeplab({"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": os_, "head": head}, 6)
    assert isinstance(m, DeepLab)
    m.train()
    x = torch.randn(2, 3, 50, 34)
    y = m(x)
    assert y.shape == (2, 6, 50, 34)
    y.mean().backward()
    groups = m.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters())
    assert all(p.grad is not None for p in groups[1]["params"])


def test_deeplab_head_and_freeze_bn():
    m = build_deeplab({"backbone": "efficientnet_lite0", "pretrained": False, "freeze_bn": True, "head": "v3plus"}, 3)
    m.train()
    assert not any(b.training for b in m.backbone.modules() if isinstance(b, nn.BatchNorm2d))
    assert all(b.training for b in m.head.modules() if isinstance(b, nn.BatchNorm2d))
    with pytest.raises(S2CError, match="seg.head"):
        build_deeplab({"backbone": "efficientnet_lite0", "pretrained": False, "head": "v2"}, 3)


def test_freeze_bn_returns_module_and_is_idempotent():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert freeze_bn(freeze_bn(seq)) is seq
    seq.train()
    assert type(seq[1]) is EvalBatchNorm2d and not seq[1].training
