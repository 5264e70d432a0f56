"""Embedding codecs: fp16, and int8 / int6 quantisation with the plane predictor (layout: :mod:`s2c.sam.cache`)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import S2CError
from .layout import EMBED_CODECS


def codec_settings(codec: str = "fp16", levels: int | None = None) -> dict:
    """The keys a codec adds to an embedding store's ``settings`` ({} for fp16, so fp16 identities
    are those of stores built before codecs existed). ``levels`` overrides L (measurements only)."""
    if codec not in EMBED_CODECS:
        raise S2CError(f"sam.embed_codec = {codec!r}; use one of {sorted(EMBED_CODECS)}")
    if codec == "fp16":
        return {}
    lv = int(levels or EMBED_CODECS[codec])
    if not 1 <= lv <= 127:
        raise ValueError(f"{codec} codec levels must be in 1..127, got {lv}")
    return {"codec": codec, "levels": lv}


def store_codec(settings: dict | None) -> tuple[str, int | None]:
    """(codec, levels) recorded in an embedding store's settings (no ``codec`` key = fp16)."""
    settings = settings or {}
    codec = settings.get("codec", "fp16")
    if codec not in EMBED_CODECS:
        raise S2CError(f"embedding codec {codec!r} recorded in the cache is unknown to this s2c "
                       f"(known: {sorted(EMBED_CODECS)}); upgrade s2c or rebuild the cache")
    return codec, (None if codec == "fp16" else int(settings.get("levels", EMBED_CODECS[codec])))


def quantize_int8(emb: np.ndarray, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float → (stored int8 residuals (C, H, W), float32 scales (C,)). See the layout."""
    x = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embedding has non-finite values; the int8 codec cannot store them")
    scale = (np.abs(x).max(axis=(1, 2)) / levels).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / safe[:, None, None]), -levels, levels).astype(np.int16)
    r = q.copy()
    r[:, :, 1:] -= q[:, :, :-1]
    r[:, 1:, :] -= q[:, :-1, :]
    r[:, 1:, 1:] += q[:, :-1, :-1]
    return r.astype(np.uint8).view(np.int8), scale  # modulo 256


def _undo_prediction(stored: np.ndarray) -> np.ndarray:
    """Stored residuals → q (int8): two cumulative sums modulo 256."""
    u = np.asarray(stored).view(np.uint8)
    return np.cumsum(np.cumsum(u, axis=1, dtype=np.uint8), axis=2, dtype=np.uint8).view(np.int8)


def dequantize_int8(stored: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_int8`: float32 (C, H, W)."""
    return _undo_prediction(stored).astype(np.float32) * np.asarray(scale, np.float32)[:, None, None]


def dequantize_int8_half(stored: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`quantize_int8` as the readers return it: float16 tensor (C, H, W).

    numpy, single-threaded: torch's multi-threaded elementwise ops are far slower than one thread
    when the cores are busy (DataLoader workers run torch with 1 thread, the main process does not)."""
    out = _undo_prediction(stored).astype(np.float32)
    out *= np.asarray(scale, np.float32)[:, None, None]
    return torch.from_numpy(out.astype(np.float16))
