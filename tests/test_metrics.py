"""Metrics against hand-made confusion matrices and a constructed threshold-search case."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2c.errors import S2CError
from s2c.metrics import (ThresholdSearch, confusion_matrix, iou_from_confusion, metrics_dict,
                         miou_from_confusion, read_metrics, with_background, write_metrics)


def test_confusion_matrix_counts_and_ignores_255():
    gt = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    cm = confusion_matrix(pred, gt, 3)
    expected = np.array([[1, 1, 0],
                         [0, 1, 1],
                         [0, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 5  # the ignored pixel is not counted


def test_iou_and_miou_hand_made():
    cm = np.array([[50, 10, 0],
                   [5, 30, 0],
                   [0, 0, 0]])
    iou = iou_from_confusion(cm)
    # bg: 50 / (50 + 5 + 10); cls1: 30 / (30 + 10 + 5); cls2 absent everywhere → NaN
    assert iou[0] == pytest.approx(50 / 65)
    assert iou[1] == pytest.approx(30 / 45)
    assert np.isnan(iou[2])
    assert miou_from_confusion(cm) == pytest.approx((50 / 65 + 30 / 45) / 2)


def test_class_predicted_but_absent_from_gt_has_zero_iou():
    cm = np.array([[8, 2], [0, 0]])
    iou = iou_from_confusion(cm)
    assert iou[1] == 0.0 and iou[0] == pytest.approx(0.8)
    assert miou_from_confusion(cm) == pytest.approx(0.4)


def test_out_of_range_labels_raise():
    with pytest.raises(S2CError, match="outside"):
        confusion_matrix(np.array([[3]]), np.array([[0]]), 3)
    with pytest.raises(S2CError, match="ground truth"):
        confusion_matrix(np.array([[0]]), np.array([[7]]), 3)
    with pytest.raises(S2CError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(1, 40), st.randoms(use_true_random=False))
def test_confusion_matrix_matches_loop(K, n, rnd):
    rng = np.random.default_rng(rnd.randint(0, 2**31))
    gt = rng.integers(0, K, n).astype(np.uint8)
    gt[rng.random(n) < 0.2] = 255
    pred = rng.integers(0, K, n)
    ref = np.zeros((K, K), int)
    for g, p in zip(gt, pred):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, K), ref)


def test_threshold_search_picks_constructed_threshold():
    # one fg class (index 0 → label 1). Object pixels have CAM 0.8 or 0.6, background pixels 0.35,
    # so every t in [0.35, 0.6) separates perfectly; on the grid the first perfect t is 0.35.
    gt = np.array([[1, 1, 0, 0]], np.uint8)
    cams = np.array([[[0.8, 0.6, 0.35, 0.1]]], np.float32)
    s = ThresholdSearch(2, thresholds=[0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7])
    s.add(cams, np.array([0]), gt)
    t, cm, mious = s.best()
    assert t == pytest.approx(0.35)  # CAM == t goes to background (argmax tie → first)
    np.testing.assert_array_equal(cm, [[2, 0], [0, 2]])
    assert mious[3] == pytest.approx(1.0)
    assert mious[2] < 1.0 and mious[6] < 1.0  # 0.3 keeps a bg pixel as fg; 0.6 drops an object pixel


def test_threshold_search_equals_brute_force_over_images():
    rng = np.random.default_rng(0)
    K = 4
    thresholds = [0.1, 0.25, 0.5, 0.75, 0.9]
    s = ThresholdSearch(K, thresholds)
    brute = np.zeros((len(thresholds), K, K), np.int64)
    for i in range(5):
        H, W = 6 + i, 7
        classes = rng.choice(K - 1, size=i % 3, replace=False)
        cams = rng.random((classes.size, H, W)).astype(np.float32)
        gt = rng.integers(0, K, (H, W)).astype(np.uint8)
        gt[0, 0] = 255
        s.add(cams, classes, gt)
        for j, t in enumerate(thresholds):
            stack = np.concatenate([np.full((1, H, W), t, np.float32), cams])
            labels = np.concatenate([[0], classes + 1])
            brute[j] += confusion_matrix(labels[stack.argmax(0)], gt, K)
    np.testing.assert_array_equal(s.confusions(), brute)
    assert s.n_images == 5


def test_threshold_search_rejects_bad_grid_and_shapes():
    with pytest.raises(S2CError, match="increasing"):
        ThresholdSearch(3, [0.5, 0.2])
    s = ThresholdSearch(3, [0.5])
    with pytest.raises(S2CError, match="infer_cam"):
        s.add(np.zeros((1, 4, 4)), np.array([0]), np.zeros((4, 5), np.uint8))


def test_write_metrics_json(tmp_path):
    cm = np.array([[3, 1], [1, 3]])
    names = with_background(["cat"])
    out = write_metrics(tmp_path / "sub" / "m.json", cm, names, threshold=0.3, n_images=2)
    d = json.loads((tmp_path / "sub" / "m.json").read_text())
    assert d == out
    assert set(d) == {"miou", "iou", "threshold", "n_images"}
    assert d["iou"] == {"background": 60.0, "cat": 60.0}
    assert d["miou"] == 60.0 and d["threshold"] == 0.3
    assert read_metrics(tmp_path / "sub" / "m.json") == d
    # undefined IoU → null, and it does not enter the mean
    d2 = metrics_dict(np.array([[4, 0], [0, 0]]), names)
    assert d2["iou"]["cat"] is None and d2["miou"] == 100.0
    with pytest.raises(S2CError, match="class names"):
        metrics_dict(cm, ["background"])


def test_read_metrics_errors(tmp_path):
    with pytest.raises(S2CError, match="not found"):
        read_metrics(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(S2CError, match="bad.json"):
        read_metrics(tmp_path / "bad.json")


def test_summary_tsv_puts_metrics_side_by_side(tmp_path):
    from s2c.stages.summary import main

    for name, v in (("cam_train", 50.0), ("seg_val", 40.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"miou": v, "iou": {"background": 80.0, "aeroplane": v - 30, "bicycle": None}}))
    out = tmp_path / "summary.tsv"
    assert main([str(tmp_path / "cam_train.json"), str(tmp_path / "seg_val.json"), "--tsv", str(out)]) == 0
    rows = [r.split("\t") for r in out.read_text().splitlines()]
    assert rows[0] == ["class", "CAM (train)", "segmentation (val)"]
    assert rows[2] == ["aeroplane", "20.00", "10.00"] and rows[3] == ["bicycle", "", ""]
    assert rows[-1] == ["mIoU", "50.00", "40.00"]


# ---------------------------------------------------------------------------- sanity floors
def test_prior_cams_shapes_and_values():
    from s2c.metrics import prior_cams

    c = prior_cams("centre_prior", 2, (9, 15))
    assert c.shape == (2, 9, 15) and np.allclose(c[0], c[1])
    assert c[0].argmax() == np.ravel_multi_index((4, 7), (9, 15)) and c.max() <= 1.0
    # σ = a third of each side: one σ from the centre along x is exp(-1/2)
    big = prior_cams("centre_prior", 1, (300, 300))[0]
    assert abs(big[150, 150 + 100] / big[150, 150] - np.exp(-0.5)) < 0.02
    assert (prior_cams("all_labelled", 3, (4, 5)) == 1).all()
    with pytest.raises(S2CError, match="unknown sanity floor"):
        prior_cams("nope", 1, (2, 2))


def test_floor_search_centre_prior_on_centred_object():
    """A centred square object: the centre prior at its best threshold covers it well; putting the
    object in a corner drops the floor; ``all_labelled`` equals predicting the class everywhere."""
    from s2c.metrics import FloorSearch

    gt = np.zeros((60, 60), np.uint8)
    gt[20:40, 20:40] = 3
    fs = FloorSearch(5)
    fs.add(np.array([2]), gt)
    r = fs.result()
    assert r["centre_prior"]["miou"] > 60
    fg = (gt == 3).mean()
    assert r["all_labelled"]["miou"] == pytest.approx(100 * fg / 2, abs=1e-3)  # bg IoU 0, class IoU = area share
    corner = np.zeros((60, 60), np.uint8)
    corner[:15, :15] = 3
    fs2 = FloorSearch(5)
    fs2.add(np.array([2]), corner)
    assert fs2.result()["centre_prior"]["miou"] < r["centre_prior"]["miou"]


def test_floor_verdict_flags_results_below_the_floor():
    from s2c.metrics import floor_verdict

    floors = {"centre_prior": {"miou": 16.1, "threshold": 0.3}, "all_labelled": {"miou": 11.4, "threshold": 0.05}}
    ok, msg = floor_verdict(30.0, floors)
    assert ok and "above" in msg
    bad, msg = floor_verdict(12.0, floors)
    assert not bad and "NOT above" in msg and "16.1" in msg


def test_summary_shows_floor_and_below_floor_mark(tmp_path, capsys):
    import json

    from s2c.stages.summary import main

    m = {"miou": 10.0, "iou": {"background": 50.0, "cat": 5.0}, "threshold": 0.3,
         "floors": {"centre_prior": {"miou": 16.1, "threshold": 0.3}, "all_labelled": {"miou": 11.4, "threshold": 0.05}},
         "above_floor": False}
    p = tmp_path / "cam_train.json"
    p.write_text(json.dumps(m))
    tsv = tmp_path / "s.tsv"
    main([str(p), "--tsv", str(tsv)])
    out = capsys.readouterr().out
    assert "16.10" in out and "BELOW a model-free floor" in out
    assert "floor: centre_prior\t16.10" in tsv.read_text()
