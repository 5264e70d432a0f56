"""The ``cam`` defaults are the authors' code (sangrockEG/S2C@102e14c): a table of its values, each
with the line it comes from, against :func:`s2c.sections.resolve_cam` of an empty section. The
shipped GPU configs (VOC, COCO) must not depart from them either; configs that do (the demo, the
CPU overlays) name the departing keys in a comment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from s2c.sections import resolve_cam

ROOT = Path(__file__).resolve().parents[1]

# (key path, the authors' value, where in their code)
REFERENCE = [
    (("epochs",), 40, "train.py: --max_epochs 40"),
    (("batch_size",), 8, "train.py: --batch_size 8"),
    (("lr",), 0.02, "train.py: --lr 0.02"),
    (("weight_decay",), 5e-4, "train.py: --wt_dec 5e-4"),
    (("momentum",), 0.0, "tools/torchutils PolyOptimizer: wt_dec lands in SGD's momentum slot (≈ none)"),
    (("poly_power",), 0.9, "PolyOptimizer: (1 - step / max_step) ** 0.9"),
    (("lr_mult_new",), 1.0, "networks/resnet38d.py: from_scratch_layers is empty"),
    (("ssc", "enabled"), True, "model_s2c.update: loss_ssc always added"),
    (("ssc", "level"), "feature", "update: SSC on out['feat'], the 256-d map"),
    (("ssc", "temperature"), 1.0, "train.py: --T 1 (a multiplier: pred_ssc * T)"),
    (("ssc", "unassigned_prototype"), True, "update: scatter_mean over segment 0 (se + 1, -1 unassigned)"),
    (("ssc", "size"), None, "update: features upsampled to the crop (H, W)"),
    (("ssc", "weight"), 1.0, "train.py: --W 1 1 1"),
    (("cpm", "enabled"), True, "update: use_cpm"),
    (("cpm", "start_epoch"), 2, "train.py: --sstart 2; use_cpm = epo > sstart - 1"),
    (("cpm", "start_step"), None, "(counted in epochs)"),
    (("cpm", "start_fraction"), None, "(counted in epochs)"),
    (("cpm", "prompt_cam"), "multiscale", "update: no-grad eval-mode MS-CAM"),
    (("cpm", "scales"), [0.5, 1.0, 1.5, 2.0], "update: img_05, img_10, img_15, img_20"),
    (("cpm", "prompts"), "peaks", "update: points from the MS-CAM's peaks"),
    (("cpm", "min_pred_iou"), None, "update: every class's mask is kept"),
    (("cpm", "min_distance"), 20, "update: peak_local_max(..., min_distance=20)"),
    (("cpm", "threshold"), 0.5, "train.py: --th_multi 0.5"),
    (("cpm", "single_peak"), False, "update: global max + local maxima"),
    (("cpm", "exclude_border"), True, "peak_local_max's default exclude_border=True"),
    (("cpm", "multimask_index"), 2, "update: idx_max_sam = 2"),
    (("cpm", "alpha_sam"), "logits", "update: conf = low-res logits of that mask"),
    (("cpm", "confidence"), "both", "update: target_conf * cam_ms[i, k][mask].mean()"),
    (("cpm", "background"), "uncovered", "update: pgt_sam[pgt_score < 0] = 20"),
    (("cpm", "loss"), "ce", "update: F.cross_entropy(cat(cam, 1 - max cam), pgt_sam)"),
    (("cpm", "weight"), 1.0, "train.py: --W 1 1 1"),
]

# (key path, s2c's default, the authors' value, why s2c departs): keys whose default is a deliberate,
# explained departure with a switch to the reference's behaviour (s2c.stages.train_cam documents each;
# bench/reference_parity.py shows the step equal to the reference's with all four set)
EXPLAINED_DEPARTURES = [
    (("ssc", "absent_prototypes"), False, True,
     "update: scatter_mean makes every id up to the batch's largest a prototype, zero where absent; "
     "s2c leaves absent ids out, so an image's loss does not depend on the rest of its batch"),
    (("cpm", "sam_resize"), "sam", "reference",
     "update: the float crop squashed to 1024² (align_corners=True) and truncated to uint8; s2c uses "
     "SamPredictor's preprocessing, the one its cached embeddings have"),
    (("cpm", "peak_rule"), "s2c", "reference",
     "update: peak_local_max of the 3×3 max-filtered CAM (plateau corners, τ there) and peaks_valid[1:]; "
     "s2c takes the CAM's own maxima and never drops a local peak that is not the global max"),
    (("cpm", "confidence_source"), "postprocessed", "lowres",
     "update: α_sam from the low-res logits resized straight to the crop, the mask from the post-processed "
     "ones; s2c takes both from the same logits, so a covered pixel never scores < 0"),
]
# the settings the reference's value of a departure needs besides it (lowres: online mode)
_DEPARTURE_CONTEXT = {("cpm", "confidence_source"): {"sam_mode": "online"}}


def _get(d, path):
    for k in path:
        d = d[k]
    return d


@pytest.mark.parametrize("path,value,source", REFERENCE, ids=[".".join(p) for p, _, _ in REFERENCE])
def test_cam_default_is_the_authors_value(path, value, source):
    assert _get(resolve_cam({}), path) == value, f"cam.{'.'.join(path)} departs from the reference ({source})"


@pytest.mark.parametrize("name", ["voc.yaml", "coco.yaml"])
def test_gpu_configs_run_the_reference_method(name):
    cfg = resolve_cam(yaml.safe_load((ROOT / "config" / name).read_text()).get("cam"))
    differ = [".".join(p) for p, v, _ in REFERENCE if _get(cfg, p) != v]
    assert not differ, f"config/{name} departs from the authors' code in cam.{differ}"


@pytest.mark.parametrize("name", ["config.yaml", "coco_mini.yaml", "coco_mini_cpu.yaml", "coco_plus.yaml",
                                  "coco_plus_cpu.yaml", "coco_plus_gpu.yaml"])
def test_departing_configs_name_their_departures(name):
    """Every cam key a config sets to a non-reference value is named in that file's text (a comment
    or the key itself under a ``departures`` note), so a reader sees what is not the authors' method."""
    text = (ROOT / "config" / name).read_text()
    cfg = yaml.safe_load(text).get("cam") or {}
    resolved = resolve_cam(cfg)
    differ = [p for p, v, _ in REFERENCE if _get(resolved, p) != v]
    if differ:
        assert "departs from the reference" in text, f"config/{name} changes {differ} without saying so"
        for p in differ:
            assert ".".join(p) in text, f"config/{name}: cam.{'.'.join(p)} departs but is not named"


def _set(path, value) -> dict:
    cfg: dict = {}
    node = cfg
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path,default,reference,why", EXPLAINED_DEPARTURES,
                         ids=[".".join(p) for p, *_ in EXPLAINED_DEPARTURES])
def test_explained_departure_defaults_and_accepts_the_reference_value(path, default, reference, why):
    assert _get(resolve_cam({}), path) == default, f"cam.{'.'.join(path)}: not the stated s2c default"
    assert default != reference, f"cam.{'.'.join(path)} equals the reference: list it in REFERENCE instead"
    cfg = {**_DEPARTURE_CONTEXT.get(path, {}), **_set(path, reference)}
    assert _get(resolve_cam(cfg), path) == reference
    assert all(p != path for p, _, _ in REFERENCE), f"cam.{'.'.join(path)} is in both lists"
