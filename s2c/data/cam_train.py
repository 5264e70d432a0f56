"""Training data for the S2C CAM classifier: augmented crops with their geometry and SAM caches.

Each item is one image after :class:`~s2c.data.transforms.TrainAugment` (METHOD.md §2) plus
everything the losses need in the *same* crop frame:

- the SE map (METHOD.md §3) warped with the image's geometry (nearest) and its segment ids
  re-indexed per crop to 1..N (0 = unassigned or crop padding), for SSC;
- the cached SAM embedding of the *original* image and its sizes, for decoder-only CPM — the
  geometry maps CAM peaks back to the original image and SAM masks into the crop.

Augmentation randomness is a pure function of (seed, epoch, index): a resumed run sees the same
crops as an uninterrupted one, whatever the worker count. Cache readers open lazily in each worker.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import S2CError
from .transforms import Geometry, TrainAugment, normalize


def reindex_np(se: np.ndarray) -> np.ndarray:
    """Map the ids present in an integer map to 1..N in order (0 stays 0). Returns int64, same shape."""
    ids, inv = np.unique(se, return_inverse=True)
    offset = 0 if ids.size and ids[0] == 0 else 1
    return (inv.reshape(se.shape) + offset).astype(np.int64)


class CAMTrainDataset(Dataset):
    """Items for train_cam.

    Args:
        dataset: a :class:`~s2c.data.SegDataset` (``open_dataset(data_cfg, split)``).
        augment: the ``cam.augment`` config (see :class:`TrainAugment`).
        embed_reader: :class:`~s2c.sam.cache.EmbeddingReader` or None (no cached CPM).
        se_reader: :class:`~s2c.sam.cache.SEMapReader` or None (no SSC).
        seed: base seed of the augmentation RNG.

    ``__getitem__(i)`` returns a dict:
        ``id`` str; ``image`` float32 (3, h, w) normalised crop; ``labels`` float32 (C,);
        ``valid`` bool (h, w) crop pixels from the image; ``geometry`` dict (:meth:`Geometry.to_dict`);
        ``se`` int64 (h, w) when ``se_reader``; ``embedding`` float16 (256, 64, 64),
        ``orig_size`` / ``input_size`` (2,) int64 when ``embed_reader``; ``gt`` int64 (h, w) the
        crop's GT mask (255 padding and unlabelled) when ``gt_masks`` (oracle CPM prompts).
    """

    def __init__(self, dataset, augment: dict | None = None, embed_reader=None, se_reader=None, seed: int = 0,
                 gt_masks: bool = False):
        self.ds = dataset
        self.gt_masks = bool(gt_masks)
        self.ids: list[str] = list(dataset.ids)
        self.aug = TrainAugment(augment or {})
        self.embed = embed_reader
        self.se = se_reader
        self.seed = int(seed)
        self.epoch = 0
        for reader, what in ((embed_reader, "embedding"), (se_reader, "SE-map")):
            if reader is not None:
                missing = [i for i in self.ids if i not in reader]
                if missing:
                    raise S2CError(
                        f"{len(missing)} training image(s) are not in the {what} cache {reader.path} "
                        f"(first: {missing[0]}); rebuild the cache for this split")

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before building the epoch's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        id_ = self.ids[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image = self.ds.load_image(id_)
        crop, geo = self.aug(image, rng)
        item: dict[str, Any] = {
            "id": id_,
            "image": normalize(crop),
            "labels": torch.as_tensor(self.ds.labels(id_), dtype=torch.float32),
            "valid": torch.from_numpy(geo.valid_mask()),
            "geometry": geo.to_dict(),
        }
        if self.se is not None:
            se = self.se.se_map(id_)
            if se.shape != image.shape[:2]:
                raise S2CError(f"SE map of {id_} in {self.se.path} is {se.shape}, image is {image.shape[:2]}; "
                               "the cache was built from other images — rebuild it")
            item["se"] = torch.from_numpy(reindex_np(geo.warp_to_crop(se, "nearest", fill=0)))
        if self.gt_masks:
            gt = self.ds.load_mask(id_)
            gt = np.full(image.shape[:2], 255, np.uint8) if gt is None else gt
            item["gt"] = torch.from_numpy(geo.warp_to_crop(gt, "nearest", fill=255).astype(np.int64))
        if self.embed is not None:
            meta = self.embed.meta(id_)
            if tuple(meta["orig_size"]) != image.shape[:2]:
                raise S2CError(f"embedding of {id_} in {self.embed.path} was computed for size {meta['orig_size']}, "
                               f"the image is {image.shape[:2]}; rebuild the embedding cache")
            item["embedding"] = self.embed.embedding(id_)
            item["orig_size"] = torch.tensor(meta["orig_size"])
            item["input_size"] = torch.tensor(meta["input_size"])
        return item


def collate(items: Sequence[dict]) -> dict[str, Any]:
    """Stack tensors, keep ``id`` and ``geometry`` as lists (geometry → :class:`Geometry`)."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if k == "geometry":
            out[k] = [Geometry.from_dict(v) for v in vals]
        elif isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        else:
            out[k] = vals
    return out


def to_device(batch: dict, device) -> dict:
    """A collated training batch on ``device`` (sizes stay on the CPU: they index, not compute)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k not in ("orig_size", "input_size")
                else v) for k, v in batch.items()}
