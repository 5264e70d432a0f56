"""THE augmentation geometry (METHOD.md §2): long-side resize → horizontal flip → crop/pad.

Everything that must follow the image into the crop (GT masks, SE maps, SAM mask logits, CAM peaks
going back to the original image) goes through one :class:`Geometry`, so they cannot drift apart.

Coordinate convention: points are (x, y) floats in pixel units; pixel i covers [i, i+1), so the
centre of pixel (col j, row i) is (j + 0.5, i + 0.5). The maps between frames are
    resize:  x_r = x * rw / W,  y_r = y * rh / H          (per-axis scale from the integer sizes)
    flip:    x_f = rw - x_r                               (when ``flip``)
    crop:    x_c = x_f - ox,    y_c = y_r - oy            (offset < 0 means zero padding)
Nearest sampling uses the same pixel-centre rule as ``torch`` ``nearest-exact`` / cv2
``INTER_NEAREST_EXACT``: output pixel j reads input pixel floor((j + 0.5) * in / out).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ..defaults import augment_settings, crop_pair
from ..errors import S2CError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Image padding colour: the ImageNet mean, i.e. exactly the reference's zero padding of the
# *normalised* image (it pads after normalisation).
IMAGE_PAD_FILL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)

# cv2.resize handles at most this many channels per call (OpenCV 5: 128; 4.x: 512).
_CV_MAX_CHANNELS = 128


def _src_index(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-exact source index of each of ``n_out`` output pixels over ``n_in`` inputs, int64."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


@dataclass(frozen=True)
class Geometry:
    """One augmentation's geometry: resize ``orig_size`` → ``resized_size``, optional horizontal
    flip, then a ``crop_size`` window at ``crop_offset`` (top-left, in the resized+flipped image;
    negative components mean zero padding before/left of the image).

    All sizes are (height, width) int tuples; ``crop_offset`` is (oy, ox).
    """

    orig_size: tuple[int, int]
    resized_size: tuple[int, int]
    flip: bool
    crop_offset: tuple[int, int]
    crop_size: tuple[int, int]

    def __post_init__(self):
        for name in ("orig_size", "resized_size", "crop_size"):
            v = getattr(self, name)
            if len(v) != 2 or min(v) < 1:
                raise S2CError(f"Geometry.{name} must be two positive ints, got {v}")

    # construction -----------------------------------------------------------------------------
    @classmethod
    def identity(cls, orig_size: tuple[int, int]) -> "Geometry":
        """No resize, no flip, crop = the whole image."""
        h, w = int(orig_size[0]), int(orig_size[1])
        return cls((h, w), (h, w), False, (0, 0), (h, w))

    def to_dict(self) -> dict:
        """Plain dict (JSON / default-collate friendly)."""
        return {
            "orig_size": list(self.orig_size), "resized_size": list(self.resized_size),
            "flip": bool(self.flip), "crop_offset": list(self.crop_offset), "crop_size": list(self.crop_size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(int(v) for v in d["orig_size"]), tuple(int(v) for v in d["resized_size"]),
                   bool(d["flip"]), tuple(int(v) for v in d["crop_offset"]), tuple(int(v) for v in d["crop_size"]))

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx) = resized / orig per axis (they differ slightly through size rounding)."""
        return (self.resized_size[0] / self.orig_size[0], self.resized_size[1] / self.orig_size[1])

    # points -----------------------------------------------------------------------------------
    def points_to_crop(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) float (x, y) in original-image pixels → (N, 2) float64 in crop pixels."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        sy, sx = self.scale
        x = p[:, 0] * sx
        y = p[:, 1] * sy
        if self.flip:
            x = self.resized_size[1] - x
        return np.stack([x - self.crop_offset[1], y - self.crop_offset[0]], axis=1)

    def points_to_orig(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) float (x, y) in crop pixels → (N, 2) float64 in original-image pixels."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        sy, sx = self.scale
        x = p[:, 0] + self.crop_offset[1]
        y = p[:, 1] + self.crop_offset[0]
        if self.flip:
            x = self.resized_size[1] - x
        return np.stack([x / sx, y / sy], axis=1)

    # rasters ----------------------------------------------------------------------------------
    def _crop_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Resized-frame row/col index of every crop row/col (pre-flip cols) and their validity."""
        rh, rw = self.resized_size
        ch, cw = self.crop_size
        rows = np.arange(ch) + self.crop_offset[0]
        cols = np.arange(cw) + self.crop_offset[1]
        if self.flip:
            cols = rw - 1 - cols
        vr = (rows >= 0) & (rows < rh)
        vc = (cols >= 0) & (cols < rw)
        return rows, cols, vr, vc

    def valid_mask(self) -> np.ndarray:
        """bool (crop_h, crop_w): True where the crop pixel comes from the image (not padding)."""
        _, _, vr, vc = self._crop_axes()
        return vr[:, None] & vc[None, :]

    def _nearest_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Original-image row/col read by each crop row/col under nearest sampling (+ validity)."""
        rows, cols, vr, vc = self._crop_axes()
        src_r = _src_index(self.resized_size[0], self.orig_size[0])
        src_c = _src_index(self.resized_size[1], self.orig_size[1])
        r = src_r[np.clip(rows, 0, self.resized_size[0] - 1)]
        c = src_c[np.clip(cols, 0, self.resized_size[1] - 1)]
        return r, c, vr, vc

    def _check_hw(self, shape: tuple[int, ...], what: str) -> None:
        if tuple(shape) != tuple(self.orig_size):
            raise S2CError(f"{what} has spatial size {tuple(shape)}, but this Geometry expects {self.orig_size}")

    def warp_to_crop(self, arr: np.ndarray, interp: str = "nearest", fill: float | tuple = 0) -> np.ndarray:
        """Warp an original-size array into the crop.

        Args:
            arr: (H, W) or (H, W, K) array at ``orig_size``; any dtype for ``nearest``; bilinear
                keeps uint8/uint16/int16/float32/float64 and computes other dtypes in float32.
            interp: ``"nearest"`` (labels, segment ids) or ``"bilinear"`` (images, logits).
            fill: value for padding pixels (scalar, or per-channel tuple for (H, W, K)).
        Returns:
            (crop_h, crop_w) or (crop_h, crop_w, K) array.
        """
        arr = np.asarray(arr)
        self._check_hw(arr.shape[:2], "warp_to_crop input")
        rows, cols, vr, vc = self._crop_axes()
        ch, cw = self.crop_size
        if interp == "nearest":
            r, c, vr, vc = self._nearest_index()
            src = arr[r[:, None], c[None, :]]
        elif interp == "bilinear":
            if arr.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
                arr = arr.astype(np.float32)
            resized = _cv2_resize(arr, self.resized_size)
            src = resized[np.clip(rows, 0, self.resized_size[0] - 1)[:, None],
                          np.clip(cols, 0, self.resized_size[1] - 1)[None, :]]
        else:
            raise S2CError(f"unknown interpolation {interp!r}; use 'nearest' or 'bilinear'")
        out = np.empty((ch, cw) + arr.shape[2:], dtype=src.dtype)
        out[...] = np.asarray(fill, dtype=src.dtype)
        valid = vr[:, None] & vc[None, :]
        out[valid] = src[valid]
        return out

    def warp_to_crop_torch(self, t: torch.Tensor, mode: str = "bilinear", fill: float = 0.0) -> torch.Tensor:
        """Torch twin of :meth:`warp_to_crop` for (N, H, W) float tensors (e.g. SAM mask logits),
        on the tensor's device. Returns (N, crop_h, crop_w); agrees with the numpy version."""
        if t.dim() != 3:
            raise S2CError(f"warp_to_crop_torch expects an (N, H, W) tensor, got shape {tuple(t.shape)}")
        self._check_hw(t.shape[1:], "warp_to_crop_torch input")
        dev = t.device
        if mode == "nearest":
            r, c, vr, vc = self._nearest_index()
            src = t[:, torch.from_numpy(r).to(dev)[:, None], torch.from_numpy(c).to(dev)[None, :]]
        elif mode == "bilinear":
            rows, cols, vr, vc = self._crop_axes()
            tf = t if t.is_floating_point() else t.float()
            resized = F.interpolate(tf[None], size=self.resized_size, mode="bilinear", align_corners=False)[0]
            ri = torch.from_numpy(np.clip(rows, 0, self.resized_size[0] - 1)).to(dev)
            ci = torch.from_numpy(np.clip(cols, 0, self.resized_size[1] - 1)).to(dev)
            src = resized[:, ri[:, None], ci[None, :]]
        else:
            raise S2CError(f"unknown mode {mode!r}; use 'nearest' or 'bilinear'")
        valid = torch.from_numpy(vr[:, None] & vc[None, :]).to(dev)
        return torch.where(valid[None], src, torch.as_tensor(fill, dtype=src.dtype, device=dev))


def _cv2_resize(arr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """cv2 bilinear (half-pixel centres, like torch ``align_corners=False``) resize to (h, w);
    keeps the (H, W) / (H, W, K) layout, splitting channels past cv2's limit."""
    h, w = size_hw
    if arr.shape[:2] == (h, w):
        return arr
    if arr.ndim == 2:
        return cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
    parts = []
    for k in range(0, arr.shape[2], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(arr[:, :, k : k + _CV_MAX_CHANNELS])
        out = cv2.resize(chunk, (w, h), interpolation=cv2.INTER_LINEAR)
        parts.append(out.reshape(h, w, chunk.shape[2]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def long_side_size(orig_size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) after resizing so that max(h, w) == long_side (aspect kept, each side ≥ 1)."""
    h, w = orig_size
    s = long_side / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def random_crop_offset(size: int, crop: int, rng: np.random.Generator) -> int:
    """Offset of a ``crop``-long window on a ``size``-long axis, uniform like the reference
    RandomCrop: inside the image when it is larger, else random padding placement (offset ≤ 0)."""
    lo, hi = min(0, size - crop), max(0, size - crop)
    return int(rng.integers(lo, hi + 1))


class TrainAugment:
    """Training augmentation returning the geometry it applied.

    cfg keys (defaults :data:`s2c.defaults.AUG_DEFAULTS`): ``augment`` (false → identity resize, no flip, no
    jitter, top-left crop/pad to ``crop_size``), ``resize_long`` [lo, hi] (long side uniform
    integer in [lo, hi]), ``crop_size`` (int or [h, w]), ``flip`` (p = 0.5),
    ``color_jitter`` [brightness, contrast, saturation, hue] applied with ``color_jitter_p`` in a
    random order (as torchvision ``ColorJitter``), ``grayscale_p``.

    ``__call__(image uint8 (H, W, 3), rng) -> (crop uint8 (ch, cw, 3), Geometry)``, deterministic
    given ``rng``. Padding is the ImageNet mean colour (zero after :func:`normalize`).
    """

    def __init__(self, cfg: dict | None = None):
        self.cfg = augment_settings(cfg)
        lo, hi = (int(v) for v in self.cfg["resize_long"])
        self.resize_long = (lo, hi)
        self.crop_size = crop_pair(self.cfg["crop_size"])

    def sample_geometry(self, orig_size: tuple[int, int], rng: np.random.Generator) -> Geometry:
        """Draw the geometric part of the augmentation for an image of ``orig_size`` (h, w)."""
        orig_size = (int(orig_size[0]), int(orig_size[1]))
        ch, cw = self.crop_size
        if not self.cfg["augment"]:
            return Geometry(orig_size, orig_size, False, (0, 0), (ch, cw))
        resized = long_side_size(orig_size, int(rng.integers(self.resize_long[0], self.resize_long[1] + 1)))
        flip = bool(self.cfg["flip"]) and bool(rng.random() < 0.5)
        oy = random_crop_offset(resized[0], ch, rng)
        ox = random_crop_offset(resized[1], cw, rng)
        return Geometry(orig_size, resized, flip, (oy, ox), (ch, cw))

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour jitter (p) + random grayscale on uint8 (H, W, 3); returns uint8 (H, W, 3)."""
        b, c, s, h = (float(v) for v in self.cfg["color_jitter"])
        do_jitter = rng.random() < float(self.cfg["color_jitter_p"])
        do_gray = rng.random() < float(self.cfg["grayscale_p"])
        if not (do_jitter or do_gray):
            return image
        t = _chw_tensor(image)
        if do_jitter:
            fns = [
                (TF.adjust_brightness, b, 1.0), (TF.adjust_contrast, c, 1.0),
                (TF.adjust_saturation, s, 1.0), (TF.adjust_hue, h, 0.0),
            ]
            for k in rng.permutation(4):
                fn, amount, centre = fns[k]
                if amount <= 0:
                    continue
                lo = max(0.0, centre - amount) if centre else -amount
                factor = float(rng.uniform(lo, centre + amount))
                t = fn(t, factor)
        if do_gray:
            t = TF.rgb_to_grayscale(t, num_output_channels=3)
        return t.permute(1, 2, 0).contiguous().numpy()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Geometry]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise S2CError(f"TrainAugment expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        geo = self.sample_geometry(image.shape[:2], rng)
        if not self.cfg["augment"]:
            return geo.warp_to_crop(image, "bilinear", fill=IMAGE_PAD_FILL), geo
        # Reference order: resize, then jitter the whole resized image (contrast/saturation use
        # its statistics), then flip+crop. Splitting the warp this way gives the same pixels as
        # geo.warp_to_crop(image) because resizing to the same size is a no-op.
        resized = self.photometric(_cv2_resize(image, geo.resized_size), rng)
        flip_crop = Geometry(geo.resized_size, geo.resized_size, geo.flip, geo.crop_offset, geo.crop_size)
        return flip_crop.warp_to_crop(resized, "bilinear", fill=IMAGE_PAD_FILL), geo


def _chw_tensor(img: np.ndarray) -> torch.Tensor:
    """(h, w, 3) array → (3, h, w) tensor view; copies read-only arrays (e.g. from PIL), which
    torch cannot safely wrap."""
    if not img.flags.writeable or not img.flags.c_contiguous:
        img = np.array(img, order="C")
    return torch.from_numpy(img).permute(2, 0, 1)


def normalize(img: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB → float32 tensor (3, h, w), ImageNet mean/std normalised."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise S2CError(f"normalize expects an (h, w, 3) image, got shape {img.shape}")
    t = _chw_tensor(img).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalize_255(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` times 255 as float (B, 3, h, w), unrounded, by the authors'
    arithmetic (``tools/imutils.py`` ``denorm``: torchvision's Normalize with mean −m/s and std 1/s,
    then × 255), so that a crop gives the same float bits as there: ``cam.cpm.sam_resize: reference``
    truncates these values to uint8, where one ulp can change the byte."""
    mean = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=t.device).view(3, 1, 1)
    std = torch.tensor([1 / s for s in IMAGENET_STD], device=t.device).view(3, 1, 1)
    return (t.detach().float() - mean) / std * 255


def denormalize(t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: float (3, h, w) or (B, 3, h, w) → uint8 (h, w, 3) / (B, h, w, 3)."""
    mean = torch.tensor(IMAGENET_MEAN, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=t.device).view(3, 1, 1)
    x = (t.detach().float() * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
