"""What the two SAM cache part jobs (:mod:`s2c.stages.sam_embed`, :mod:`s2c.stages.sam_everything`) share.

Part ``K`` of ``N`` of a split (:func:`open_part`), its images decoded in DataLoader workers with a
corrupt image reported instead of raised (:func:`iter_images`, :func:`handle_corrupt`), the
settings recorded in an embedding store's identity (:func:`embed_settings`) and the command-line
flags of a part job (:func:`add_part_args`). The store layout itself is :mod:`s2c.sam.cache`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..data import open_dataset
from ..errors import S2CError
from .cache import PartWriter, part_ids

log = logging.getLogger(__name__)


def embed_settings() -> dict:
    """The settings recorded in an embedding store's identity (what changes the stored values)."""
    return {"img_size": 1024, "dtype": "float16"}


class _ImageLoader(torch.utils.data.Dataset):
    """Loads images by store index; a corrupt image yields its error message instead of raising,
    so the parent decides (fail naming the file, or skip) rather than a worker traceback."""

    def __init__(self, load: Callable[[str], np.ndarray], ids: Sequence[str], indices: Sequence[int]):
        self.load, self.ids, self.indices = load, list(ids), list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, str | None]:
        i = self.indices[k]
        try:
            return i, self.load(self.ids[i]), None
        except S2CError as e:
            return i, None, str(e)


def iter_images(
    dataset, ids: Sequence[str], indices: Sequence[int], batch_size: int, num_workers: int
) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """Batches of ``(store index, uint8 (H,W,3) image or None, error or None)``, decoded in workers."""
    loader = torch.utils.data.DataLoader(
        _ImageLoader(dataset.load_image, ids, indices),
        batch_size=batch_size,
        num_workers=num_workers if len(indices) > batch_size else 0,
        collate_fn=list,
    )
    yield from loader


def open_part(data_cfg: dict, split: str, part: int, parts: int):
    """(dataset, ids of this part) with a clear error for a bad data config."""
    if isinstance(data_cfg, (str, os.PathLike)):
        data_cfg = json.loads(Path(data_cfg).read_text())
    ds = open_dataset(data_cfg, split)
    return ds, part_ids(ds.ids, part, parts)


def handle_corrupt(writer: PartWriter, i: int, err: str, skip: bool) -> None:
    """A corrupt image of a part: fail naming it, or (``skip_corrupt``) record it as skipped."""
    if not skip:
        raise S2CError(f"{err}; replace or remove the image, or set data.skip_corrupt: true to drop unreadable "
                       "images from the split (every stage then skips them)")
    log.warning("skipping %s: %s", writer.ids[i], err)
    writer.write_skipped(i, err)


def add_part_args(p: argparse.ArgumentParser) -> None:
    """The flags of a part job (``--data-cfg --split --part --parts --out --weights-dir --cfg --device``)."""
    p.add_argument("--data-cfg", required=True, help="the config's data section as JSON (or @file.json)")
    p.add_argument("--split", required=True, help="dataset split, e.g. train / train_aug / val")
    p.add_argument("--part", type=int, default=0, help="this job's part index K (0-based)")
    p.add_argument("--parts", type=int, default=1, help="number of parts N the split is cut into")
    p.add_argument("--out", type=Path, required=True, help="output part store (…/<kind>.partK.zarr)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"), help="where MobileSAM is provisioned")
    p.add_argument("--cfg", default="{}", help="the config's sam section as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
