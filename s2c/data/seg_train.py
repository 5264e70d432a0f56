"""Training data for the segmentation network: dataset images paired with pseudo-label PNGs.

Pseudo-labels live in one directory as ``<id>.png`` (palette or grey PNG, label-map convention:
0 = background, c+1 = class c, 255 = ignore). Augmentation is torchvision ``transforms.v2`` on an
(Image, Mask) pair, so geometry is applied identically to both and masks are always resized with
nearest-neighbour: random scale → horizontal flip → random crop (label padded with 255) →
optional colour jitter (image only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import S2CError
from ..io import read_label_png
from .transforms import normalize

# Padding colour for the image part of a crop: the ImageNet mean, i.e. ~0 after normalisation.
_PAD_RGB = (124, 116, 104)


def normalize_image(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB (H,W,3) numpy or (3,H,W) tensor → float32 normalised tensor (3,H,W).

    Delegates to ``s2c.data.transforms.normalize`` so every stage shares one normalisation.
    """
    if isinstance(img, torch.Tensor):
        img = img.permute(1, 2, 0).contiguous().numpy()
    return normalize(np.ascontiguousarray(img))


def check_label_dir(labels_dir: str | Path, ids: Sequence[str]) -> list[Path]:
    """Paths ``labels_dir/<id>.png`` for all ids; S2CError naming the first missing file."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise S2CError(f"pseudo-label directory not found: {labels_dir} (run the pseudo_labels stage first)")
    paths = [labels_dir / f"{i}.png" for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise S2CError(
            f"pseudo-label PNG missing: {missing[0]} ({len(missing)} of {len(paths)} ids have no "
            "<id>.png); regenerate the pseudo-labels for this split"
        )
    return paths


class SegAugment:
    """Joint image/label augmentation.

    ``__call__(image uint8 (3,H,W) tensor, label uint8 (H,W) tensor) -> (image uint8 (3,c,c),
    label uint8 (c,c))`` with c = crop_size. Randomness comes from torch's RNG, which DataLoader
    seeds per worker from the (seeded) main process.
    """

    def __init__(self, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0),
                 flip: bool = True, jitter: Sequence[float] | None = None):
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise S2CError(f"config key seg.scale_range must be [lo, hi] with 0 < lo <= hi, got {list(scale_range)}")
        self.scale_range = (lo, hi)
        tfs: list = [v2.RandomHorizontalFlip(0.5 if flip else 0.0),
                     v2.RandomCrop(int(crop_size), pad_if_needed=True,
                                   fill={tv_tensors.Image: _PAD_RGB, tv_tensors.Mask: 255})]
        if jitter:
            tfs.append(v2.ColorJitter(*jitter))  # acts on Image only, never on Mask
        self.rest = v2.Compose(tfs)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = tv_tensors.Image(image), tv_tensors.Mask(label)
        s = float(torch.empty(()).uniform_(*self.scale_range))
        h, w = img.shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        img, lab = TF.resize(img, size, antialias=True), TF.resize(lab, size)  # Mask → nearest
        img, lab = self.rest(img, lab)
        return img.as_subclass(torch.Tensor), lab.as_subclass(torch.Tensor)


class PseudoLabelDataset(Dataset):
    """Images of a split with their pseudo-labels, augmented for segmentation training.

    ``ds``: an ``s2c.data`` SegDataset (``.ids``, ``.load_image(id)``, ``.num_classes``).
    Item: ``(image float32 (3,c,c) normalised, label int64 (c,c) in {0..C} ∪ {255})``.
    """

    def __init__(self, ds, labels_dir: str | Path, augment: SegAugment):
        self.ds = ds
        self.ids = list(ds.ids)
        if not self.ids:
            raise S2CError("train_seg: the split has no images; check data.root and the split's image list")
        self.label_paths = check_label_dir(labels_dir, self.ids)
        self.augment = augment
        self.num_classes_with_bg = int(ds.num_classes) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def load_label(self, idx: int, image_hw: tuple[int, int]) -> np.ndarray:
        """uint8 (H,W) pseudo-label of item idx, validated against the image size and classes."""
        path = self.label_paths[idx]
        lab = read_label_png(path)
        if lab.shape != tuple(image_hw):
            raise S2CError(f"pseudo-label {path} is {lab.shape[1]}x{lab.shape[0]} but its image is "
                           f"{image_hw[1]}x{image_hw[0]}; regenerate the pseudo-labels")
        bad = (lab >= self.num_classes_with_bg) & (lab != 255)
        if bad.any():
            raise S2CError(f"pseudo-label {path} has value {int(lab[bad].max())} outside 0..{self.num_classes_with_bg - 1} "
                           "and 255; check the class_set the pseudo-labels were made with")
        return lab

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.ds.load_image(self.ids[idx])
        label = self.load_label(idx, image.shape[:2])
        img, lab = self.augment(torch.tensor(image).permute(2, 0, 1),  # a copy: read_image arrays are read-only
                                torch.tensor(label))
        return normalize_image(img), lab.long()
