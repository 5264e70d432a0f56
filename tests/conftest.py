"""Shared test fixtures: a tiny generated VOC-layout dataset and the real COCO sample (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread: the 2-core CI machine also runs subprocesses (Snakemake, stage CLIs), and
# OpenMP threads spin-waiting against them made the suite several times slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory) -> Path:
    """Root of a generated VOC-layout dataset: 8 train + 2 train_aug-only, 4 val images, long side
    112 px, seed 0, the default synthetic classes. Treat as read-only (session-shared)."""
    from s2c.data.synthetic import make_synthetic_voc

    root = tmp_path_factory.mktemp("synthetic_voc") / "voc"
    return make_synthetic_voc(root, n_train=8, n_val=4, size=112, seed=0, n_aug=2)


@pytest.fixture(scope="session")
def synthetic_gt_labels(synthetic_voc, tmp_path_factory) -> tuple[dict, Path]:
    """(data_cfg, labels_dir): the synthetic train split's GT masks written as ``<id>.png`` palette
    pseudo-labels, for seg-training tests. Treat as read-only (session-shared)."""
    from s2c.data import open_dataset
    from s2c.stages.eval_seg import save_palette_png

    data_cfg = {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20"}
    ds = open_dataset(data_cfg, "train")
    labels = tmp_path_factory.mktemp("gt_labels")
    for i in ds.ids:
        save_palette_png(labels / f"{i}.png", ds.load_mask(i))
    return data_cfg, labels


@pytest.fixture(scope="session")
def coco_mini_root() -> Path:
    """Root of the real 315-image COCO sample (``<repo>/../shared/data/coco-mini``); skips when absent."""
    if not (COCO_MINI / "annotations" / "instances_val.json").is_file():
        pytest.skip(f"real COCO sample not found at {COCO_MINI}")
    return COCO_MINI
