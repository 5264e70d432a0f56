"""SAM registry: strict loading of the real MobileSAM, wrong-model detection, random builds."""

from __future__ import annotations

import pytest
import torch
from _sam_fixtures import mobile_sam, mobile_sam_checkpoint, sam_weights_dir, tiny_sam  # noqa: F401
from segment_anything.modeling import ImageEncoderViT, Sam

from s2c.errors import S2CError
from s2c.sam.build import (
    build_sam,
    guess_model_type,
    load_sam_weights,
    make_sam,
    resolve_device,
)


def test_vit_t_loads_real_checkpoint_strictly(mobile_sam, mobile_sam_checkpoint):
    sd = torch.load(mobile_sam_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(mobile_sam, Sam) and mobile_sam.model_type == "vit_t"
    assert not mobile_sam.training and mobile_sam.image_encoder.img_size == 1024
    own = mobile_sam.state_dict()
    assert own.keys() == sd.keys()
    for k in ("image_encoder.patch_embed.seq.0.c.weight", "image_encoder.neck.0.weight",
              "mask_decoder.iou_token.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):
        assert torch.equal(own[k], sd[k]), k
    assert guess_model_type(sd) == "vit_t"


def test_wrong_model_type_checkpoint_is_named(mobile_sam_checkpoint, tmp_path):
    with pytest.raises(S2CError, match=r"is a vit_t SAM checkpoint but sam.model_type is vit_b"):
        build_sam("vit_b", mobile_sam_checkpoint)
    torch.manual_seed(0)
    test_ckpt = tmp_path / "tiny.pth"
    torch.save(make_sam("vit_test").state_dict(), test_ckpt)
    with pytest.raises(S2CError, match=r"is a vit_test SAM checkpoint but sam.model_type is vit_t"):
        build_sam("vit_t", test_ckpt)


def test_guess_model_type_for_every_variant():
    # Meta-device construction: shapes without allocating the 2.5 GB of vit_h (vit_t is covered
    # by the real checkpoint above; TinyViT's constructor cannot run on meta).
    with torch.device("meta"):
        for t in ("vit_h", "vit_l", "vit_b"):
            assert guess_model_type(make_sam(t).state_dict()) == t
    assert guess_model_type(make_sam("vit_test").state_dict()) == "vit_test"
    assert guess_model_type({"foo": torch.zeros(1)}) == "unknown"


def test_random_vit_b_build():
    sam = build_sam("vit_b", None, "cpu")
    assert isinstance(sam.image_encoder, ImageEncoderViT) and sam.model_type == "vit_b"
    assert not sam.training
    assert sam.image_encoder.pos_embed.shape == (1, 64, 64, 768)
    assert len(sam.image_encoder.blocks) == 12
    assert 89e6 < sum(p.numel() for p in sam.image_encoder.parameters()) < 90e6


def test_tiny_build_round_trips_and_encodes(tiny_sam, tmp_path):
    with torch.no_grad():
        out = tiny_sam.image_encoder(torch.zeros(1, 3, 1024, 1024))
    assert out.shape == (1, 256, 64, 64)
    # A checkpoint wrapped as {"model": state_dict} (common for fine-tuned SAMs) loads too.
    ckpt = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_sam.state_dict(), "epoch": 3}, ckpt)
    again = build_sam("vit_test", ckpt)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny_sam.state_dict().values()))


def test_incomplete_checkpoint_is_rejected(tiny_sam, tmp_path):
    sd = dict(tiny_sam.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    with pytest.raises(S2CError, match=r"does not fit a vit_test SAM.*iou_token"):
        load_sam_weights(make_sam("vit_test"), sd, "x.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(S2CError, match=r"cannot read SAM checkpoint .*corrupt\.pth"):
        build_sam("vit_test", corrupt)
    with pytest.raises(S2CError, match=r"SAM checkpoint .*absent\.pth not found"):
        build_sam("vit_test", tmp_path / "absent.pth")


def test_bad_type_and_device():
    with pytest.raises(S2CError, match="unknown SAM model type 'vit_x'"):
        build_sam("vit_x")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(S2CError, match="no CUDA device"):
            resolve_device("cuda")
