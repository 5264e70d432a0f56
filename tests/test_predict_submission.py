"""Applying trained models: predict on a folder of odd images, and eval_seg on a VOC-layout split
without GT writing the PASCAL server's layout as a .tar.gz."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from s2c.stages import predict as predict_stage
from s2c.errors import S2CError
from s2c.stages.eval_seg import eval_seg
from s2c.models import build_classifier, build_deeplab
from s2c.models.classifier import cam_checkpoint
from s2c.stages.train_seg import resolve_cfg

TINY = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "head": "v3plus"}


def _seg_model(path, records=True):
    torch.manual_seed(0)
    cfg = resolve_cfg(TINY)
    model = build_deeplab(cfg, 21, None)
    ck = {"model": model.state_dict(), "seg_cfg": cfg, "num_classes": 21, "class_set": "voc20"}
    if records:
        from s2c.classes import class_names

        ck.update(class_names=list(class_names("voc20")), input_norm=model.backbone.input_norm())
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    return _seg_model(tmp_path_factory.mktemp("m") / "model.pt")


def _odd_images(folder):
    """Grey PNG, CMYK JPEG, EXIF-rotated JPEG (stored 40x24, shown 24x40), RGBA PNG, 16-bit grey,
    palette GIF, odd sizes, in a sub-folder too, plus a non-image file. Returns {relative stem: upright (H, W)}."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    (folder / "sub").mkdir()
    rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb(31, 17)[..., 0]).save(folder / "grey.png")
    Image.fromarray(rgb(29, 45)).convert("CMYK").save(folder / "cmyk.jpg")
    im = Image.fromarray(rgb(24, 40))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    im.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 255, (20, 33, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (9, 70), dtype=np.uint16)).save(folder / "sub" / "deep16.png")
    Image.fromarray(rgb(13, 13)).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb(5, 200)).save(folder / "sub" / "thin strip.JPEG")
    (folder / "notes.txt").write_text("not an image")
    return {"grey": (31, 17), "cmyk": (29, 45), "rotated": (40, 24), "alpha": (20, 33), "sub/deep16": (9, 70),
            "palette": (13, 13), "sub/thin_strip": (5, 200)}


def test_predict_on_odd_images(seg_model, tmp_path):
    want = _odd_images(tmp_path / "imgs")
    out = tmp_path / "pred"
    assert predict_stage.main(["--model", str(seg_model), "--images", str(tmp_path / "imgs"), "--out", str(out),
                               "--device", "cpu", "--no-progress", "--scales", "0.5", "1", "--flip"]) == 0
    for stem, size in want.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P" and (im.height, im.width) == size, stem
            assert np.asarray(im).max() <= 20
        with Image.open(out / f"{stem}_overlay.jpg") as im:
            assert (im.height, im.width) == size
    rows = (out / "predictions.tsv").read_text().splitlines()
    assert len(rows) == 1 + len(want) and rows[0].startswith("file\t")
    assert not (out / "notes.png").exists()


def test_predict_cam_overlays_and_old_model_files(tmp_path):
    seg = _seg_model(tmp_path / "seg.pt", records=False)  # a model.pt without class names: the class set's
    torch.manual_seed(0)
    cam_cfg = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16}
    net = build_classifier(cam_cfg, 20)
    torch.save(cam_checkpoint(net, cam_cfg, 20, "voc20"), tmp_path / "cam.pt")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((24, 30, 3), 90, np.uint8)).save(imgs / "a.jpg")
    out = predict_stage.predict_folder(seg, imgs, tmp_path / "out", cam_model=tmp_path / "cam.pt",
                                       classes=["dog", "person"], device="cpu", progress=False)
    for c in ("dog", "person"):
        with Image.open(out / f"a_cam_{c}.jpg") as im:
            assert im.size == (30, 24)


@pytest.mark.parametrize("args,msg", [(["--classes", "dog"], "needs --cam-model"),
                                      (["--images", "MISSING"], "is not a folder")])
def test_predict_errors(seg_model, tmp_path, capsys, args, msg):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imgs / "a.png")
    argv = ["--model", str(seg_model), "--images", str(imgs), "--out", str(tmp_path / "o"), "--device", "cpu"]
    if args[0] == "--images":
        argv[3] = str(tmp_path / args[1])
    else:
        argv += args
    with pytest.raises(SystemExit) as e:
        predict_stage.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("s2c: error: ") and msg in err and len(err.splitlines()) == 1


def test_corrupt_image_is_one_line(seg_model, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    with pytest.raises(S2CError, match="broken.jpg"):
        predict_stage.predict_folder(seg_model, imgs, tmp_path / "o", device="cpu", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def voc_test_split(synthetic_voc, tmp_path_factory):
    """A VOC-layout root whose `test` split has images and no GT, no XML (as VOC2012 test)."""
    root = tmp_path_factory.mktemp("voc_test") / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    ids = (synthetic_voc / "ImageSets/Segmentation/val.txt").read_text().split()[:3]
    for i in ids:
        shutil.copy(synthetic_voc / "JPEGImages" / f"{i}.jpg", root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets/Segmentation/test.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def test_voc_test_split_gives_the_server_layout(seg_model, voc_test_split, tmp_path, capsys):
    from s2c.stages.eval_seg import main

    root, ids = voc_test_split
    data = json.dumps({"kind": "voc", "root": str(root), "class_set": "voc20"})
    tar = tmp_path / "sub" / "voc_test.tar.gz"
    assert main(["--model", str(seg_model), "--data-cfg", data, "--split", "test", "--out-json",
                 str(tmp_path / "m.json"), "--out-dir", str(tmp_path / "pred"), "--cfg", '{"num_workers": 0}',
                 "--device", "cpu", "--submission", str(tar)]) == 0
    assert "no GT" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["miou"] is None and m["scored"] is False and m["n_predicted"] == 3 and m["n_images"] == 0
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
        assert names == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids)
        t.extractall(tmp_path / "x", filter="data")
    for i in ids:
        with Image.open(tmp_path / "x/results/VOC2012/Segmentation/comp6_test_cls" / f"{i}.png") as im, \
                Image.open(root / "JPEGImages" / f"{i}.jpg") as src:
            assert im.mode == "P" and im.size == src.size


def test_scored_split_says_scored(seg_model, synthetic_voc, tmp_path):
    m = eval_seg(seg_model, {"kind": "voc", "root": str(synthetic_voc)}, "val", tmp_path / "m.json",
                 cfg={"num_workers": 0}, device="cpu", submission=tmp_path / "val.tar.gz")
    assert m["scored"] is True and m["miou"] is not None
    with tarfile.open(tmp_path / "val.tar.gz") as t:
        assert all(n.startswith("results/VOC2012/Segmentation/comp6_val_cls/") for n in t.getnames())
