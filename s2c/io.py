"""File helpers shared by all stages: robust image reading and all-or-nothing writes.

Outputs are written to a temporary sibling and renamed into place, so an interrupted job never
leaves a file (or directory) that looks complete to Snakemake.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .classes import voc_palette
from .errors import S2CError


#: Pillow modes of 16-bit (and 32-bit integer) grey images: ``convert("RGB")`` clips them at 255
#: (a white image), so they are scaled to 8 bits instead.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image. Returns uint8 array (H, W, 3). Raises S2CError naming the file.

    Grey, palette and CMYK files become RGB; 16-bit grey keeps its top 8 bits. The EXIF orientation
    tag is ignored: label maps and COCO annotations are drawn on the stored pixel grid.
    """
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"image not found: {path} (check the dataset root and the image list)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _WIDE_GREY:
                grey = (np.asarray(im).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise S2CError(
            f"corrupt or unreadable image: {path} ({e.__class__.__name__}: {e}); "
            "replace the file or remove its id from the image list"
        ) from None


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read an index/palette PNG label map as-is. Returns uint8 array (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"label map not found: {path} (check the dataset root / GT folder)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise S2CError(f"label map {path} has mode {im.mode}; expected a palette (P) or grey (L) PNG")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise S2CError(f"corrupt label map: {path} ({e}); regenerate or replace it") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place (file or dir).

    On any exception the temporary is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:  # name the output the user asked for, not our temporary
        raise OSError(e.errno, e.strerror, str(path)) from None
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {target}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check it is writable, with a clear error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise S2CError(f"cannot create output directory {path}: {e.strerror}; choose a writable path") from None
    if not os.access(path, os.W_OK):
        raise S2CError(f"output directory {path} is not writable; fix its permissions or choose another path")
    return path


def save_label_png(label: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 (H, W) label map as a VOC-palette PNG (not atomic: used inside a temp dir)."""
    im = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)
