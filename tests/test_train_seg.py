"""train_seg on the tiny synthetic VOC fixture, GT masks standing in for pseudo-labels."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from s2c.data import open_dataset
from s2c.data.seg_train import PseudoLabelDataset, SegAugment, check_label_dir
from s2c.errors import S2CError
from s2c.stages.eval_seg import save_palette_png
from s2c.stages.train_seg import main, resolve_cfg, seg_loss, train_seg

# Tiny and CPU-fast: random-init EfficientNet-Lite0, 64 px crops, no workers (deterministic).
TINY = {"backbone": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "head": "v3plus",
        "epochs": 2, "batch_size": 4, "lr": 0.01, "crop_size": 64, "scale_range": [0.75, 1.25],
        "num_workers": 0, "seed": 0, "log_every": 1}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def voc(synthetic_gt_labels):
    """(data_cfg, labels_dir): train-split GT masks written as <id>.png pseudo-labels."""
    return synthetic_gt_labels


@pytest.fixture(scope="module")
def full_run(voc, tmp_path_factory):
    """An uninterrupted 2-epoch run: (out_dir, per-epoch mean losses)."""
    data_cfg, labels = voc
    out = tmp_path_factory.mktemp("seg_full")
    losses = []
    train_seg(data_cfg, "train", labels, out, TINY, device="cpu",
              on_epoch_end=lambda ep, m: losses.append(m["loss"]))
    return out, losses


def test_full_run_writes_model_log_and_checkpoint(full_run, voc):
    out, losses = full_run
    ck = torch.load(out / "model.pt", weights_only=False)
    assert set(ck) == {"model", "seg_cfg", "num_classes", "class_set", "class_names", "input_norm"}
    assert len(ck["class_names"]) == 20 and set(ck["input_norm"]) == {"mean", "std"}
    assert ck["num_classes"] == 21 and ck["class_set"] == "voc20"
    assert ck["seg_cfg"] == resolve_cfg(TINY)
    assert any(k.endswith("weight") for k in ck["model"])
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and last["step"] > 0
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, last["step"] + 1))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert (out / "losses.png").stat().st_size > 0
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_loss_decreases_when_overfitting(voc, tmp_path):
    data_cfg, labels = voc
    cfg = {**TINY, "epochs": 6, "scale_range": [1.0, 1.0], "flip": False}
    losses = []
    train_seg(data_cfg, "train", labels, tmp_path, cfg, device="cpu",
              on_epoch_end=lambda ep, m: losses.append(m["loss"]))
    # random crops make single epochs noisy; seeds 0-2 all give mean(last two) < 0.5 * first
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses


def test_killed_run_resumes_from_checkpoint(voc, full_run, tmp_path):
    data_cfg, labels = voc

    def kill_after_first(ep, m):
        if ep == 1:
            raise Killed

    with pytest.raises(Killed):
        train_seg(data_cfg, "train", labels, tmp_path, TINY, device="cpu", on_epoch_end=kill_after_first)
    assert not (tmp_path / "model.pt").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 1

    epochs_run = []
    train_seg(data_cfg, "train", labels, tmp_path, TINY,
              device="cpu", on_epoch_end=lambda ep, m: epochs_run.append(ep))
    assert epochs_run == [2]  # continued, did not restart at epoch 1
    # Resuming restores weights, optimizer and RNG state: same result as never being killed.
    resumed = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    full = torch.load(full_run[0] / "model.pt", weights_only=False)["model"]
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-4, atol=1e-5, msg=k)
    with open(tmp_path / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    with open(full_run[0] / "losses.csv") as f:
        full_rows = list(csv.DictReader(f))
    # every step logged once: rows the checkpoint covers are kept, none repeated
    assert [r["step"] for r in rows] == [r["step"] for r in full_rows]
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(r["loss"]) for r in full_rows], rel=1e-4)


def test_checkpoint_of_other_config_or_labels_is_not_resumed(voc, full_run, tmp_path, caplog):
    """Snakemake reruns train_seg after a kill (resume) and after its config or pseudo-labels
    changed: then the old checkpoint must not be resumed."""
    data_cfg, labels = voc
    (tmp_path / "last.pt").write_bytes((full_run[0] / "last.pt").read_bytes())
    epochs = []
    train_seg(data_cfg, "train", labels, tmp_path, {**TINY, "lr": 0.5}, device="cpu",
              on_epoch_end=lambda ep, m: epochs.append(ep))
    assert "not resuming" in caplog.text and "cfg" in caplog.text
    assert len(epochs) == TINY["epochs"]  # trained from scratch, not skipped as finished


def _killed_after_epoch_1(data_cfg, labels, out):
    def kill(ep, m):
        if ep == 1:
            raise Killed
    with pytest.raises(Killed):
        train_seg(data_cfg, "train", labels, out, TINY, device="cpu", on_epoch_end=kill)


def test_interrupted_run_over_other_labels_is_not_resumed(voc, tmp_path, caplog):
    """Same config, regenerated pseudo-labels with other contents: a fresh run."""
    data_cfg, labels = voc
    _killed_after_epoch_1(data_cfg, labels, tmp_path / "out")
    relabeled = tmp_path / "relabeled"
    shutil.copytree(labels, relabeled)
    first = sorted(relabeled.glob("*.png"))[0]
    a = np.array(Image.open(first))
    a[0, 0] = 255 if a[0, 0] != 255 else 0
    save_palette_png(first, a)
    epochs = []
    train_seg(data_cfg, "train", relabeled, tmp_path / "out", TINY, device="cpu",
              on_epoch_end=lambda ep, m: epochs.append(ep))
    assert "not resuming" in caplog.text and "labels" in caplog.text
    assert epochs == [1, 2]


def test_touched_labels_still_resume(voc, tmp_path):
    """New mtimes over the same contents (`snakemake --touch`, a remount, a copy without times)
    must not throw away an interrupted run."""
    data_cfg, labels = voc
    touched = tmp_path / "touched"
    shutil.copytree(labels, touched)
    _killed_after_epoch_1(data_cfg, touched, tmp_path / "out")
    for f in touched.iterdir():
        os.utime(f, (f.stat().st_atime + 100, f.stat().st_mtime + 100))
    epochs = []
    train_seg(data_cfg, "train", touched, tmp_path / "out", TINY, device="cpu",
              on_epoch_end=lambda ep, m: epochs.append(ep))
    assert epochs == [2]


def test_missing_pseudo_label_names_the_file(voc, tmp_path):
    data_cfg, labels = voc
    ids = open_dataset(data_cfg, "train").ids
    for i in ids[1:]:
        (tmp_path / f"{i}.png").write_bytes((labels / f"{i}.png").read_bytes())
    with pytest.raises(S2CError, match=rf"{ids[0]}\.png"):
        check_label_dir(tmp_path, ids)
    with pytest.raises(S2CError, match=rf"pseudo-label PNG missing: .*{ids[0]}\.png"):
        train_seg(data_cfg, "train", tmp_path, tmp_path / "out", TINY, device="cpu")


def test_cli(voc, tmp_path, capsys):
    data_cfg, labels = voc
    cfg = {**TINY, "epochs": 1, "jitter": [0.3, 0.3, 0.3, 0.05]}
    assert main(["--data-cfg", json.dumps(data_cfg), "--split", "train", "--labels", str(labels),
                 "--out", str(tmp_path / "out"), "--cfg", json.dumps(cfg), "--device", "cpu"]) == 0
    assert "train_seg: wrote" in capsys.readouterr().out
    assert torch.load(tmp_path / "out" / "model.pt", weights_only=False)["seg_cfg"]["jitter"] == cfg["jitter"]

    with pytest.raises(SystemExit) as e:
        main(["--data-cfg", json.dumps(data_cfg), "--split", "train", "--labels", str(tmp_path / "nope"),
              "--out", str(tmp_path / "out"), "--cfg", json.dumps(TINY), "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("s2c: error: pseudo-label directory not found") and "\n" not in err


def test_unknown_config_key_is_refused():
    with pytest.raises(S2CError, match=r"unknown config key.*'crop'.*seg section"):
        resolve_cfg({"crop": 3})


def test_wrong_label_values_are_refused(voc, tmp_path):
    data_cfg, labels = voc
    ds = open_dataset(data_cfg, "train")
    for i in ds.ids:
        save_palette_png(tmp_path / f"{i}.png", np.full(ds.load_mask(i).shape, 40, np.uint8))
    data = PseudoLabelDataset(ds, tmp_path, SegAugment(32))
    with pytest.raises(S2CError, match=r"has value 40 outside 0\.\.20"):
        data[0]


def test_augment_keeps_image_and_label_aligned():
    """Label = colour index; after scale/flip/crop each labelled pixel still shows its colour."""
    torch.manual_seed(0)
    lab = torch.zeros(40, 60, dtype=torch.uint8)
    lab[:, 30:] = 1
    lab[20:, :15] = 2
    colours = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=torch.uint8)
    img = colours[lab.long()].permute(2, 0, 1)
    aug = SegAugment(48, scale_range=(0.5, 2.0), flip=True)
    saw_pad = saw_flip = False
    for _ in range(30):
        im, lb = aug(img, lab)
        assert im.shape == (3, 48, 48) and lb.shape == (48, 48) and im.dtype == torch.uint8
        assert set(lb.unique().tolist()) <= {0, 1, 2, 255}  # nearest-neighbour: no blended labels
        saw_pad |= bool((lb == 255).any())
        # class 1 (right half) ends up on the left only when flipped
        cols = torch.nonzero(lb == 1)[:, 1]
        saw_flip |= bool(cols.numel() and cols.float().mean() < 16)
        for c in range(3):
            # pixels whose 5x5 neighbourhood is all class c (the image is blended near edges)
            inner = torch.nn.functional.max_pool2d((lb != c).float()[None], 5, 1, 2)[0] == 0
            diff = (im.permute(1, 2, 0)[inner].int() - colours[c].int()).abs()
            assert diff.numel() == 0 or diff.max() < 40, (c, diff)  # a misaligned pixel would be off by 255
    assert saw_pad and saw_flip


def test_seg_loss_ignores_255_and_handles_empty_batches():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    lab = torch.full((2, 4, 4), 255, dtype=torch.long)
    assert seg_loss(logits, lab).item() == 0.0
    lab[0, 0, 0] = 1
    expected = torch.nn.functional.cross_entropy(logits[:1, :, 0, 0], torch.tensor([1]))
    torch.testing.assert_close(seg_loss(logits, lab), expected)


def test_same_config_twice_is_bit_identical(voc, full_run, tmp_path):
    """Determinism on CPU: the same config and seed give the same weights (and so the same metrics)."""
    data_cfg, labels = voc
    train_seg(data_cfg, "train", labels, tmp_path, TINY, device="cpu")
    again = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    full = torch.load(full_run[0] / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(again[k], full[k]) for k in full)
