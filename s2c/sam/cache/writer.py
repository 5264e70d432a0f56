"""The one-process writer of a part store, resumable from its ``.partial`` store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from ...errors import S2CError
from .codec import quantize_int8, store_codec
from .layout import (
    CACHE_FORMAT,
    EMBED_SHAPE,
    IDENTITY_KEYS,
    META_COLS,
    STATUS_DONE,
    STATUS_MISSING,
    STATUS_SKIPPED,
    STORE_ALL,
    compressors,
)


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


class PartWriter:
    """Writes one part store; resumes from ``<out>.partial`` when its identity and ids match.

    Use ``todo()`` for the indices still to compute, ``write_embedding`` / ``write_se`` /
    ``write_skipped`` per image, then ``finalize()`` (checks completeness, renames into place).
    """

    def __init__(self, out: str | os.PathLike, identity: dict, ids: Sequence[str], part: int, parts: int):
        self.out = Path(out)
        self.tmp = partial_path(self.out)
        self.kind = identity["kind"]
        self.codec, self.levels = store_codec(identity.get("settings")) if self.kind == "embed" else ("fp16", None)
        self.ids = list(ids)
        attrs = {
            "format": CACHE_FORMAT,
            **identity,
            "part": int(part),
            "parts": int(parts),
            "ids": self.ids,
            "complete": False,
            "skipped": [],
        }
        self.resumed = False
        if self.tmp.exists():
            try:
                old = dict(zarr.open_group(self.tmp, mode="r").attrs).get("s2c", {})
            except Exception:  # unreadable leftovers are simply rebuilt
                old = {}
            same = all(old.get(k) == attrs[k] for k in (*IDENTITY_KEYS, "format", "part", "parts", "ids"))
            if same:
                self.resumed = True
                attrs["skipped"] = old.get("skipped", [])
            else:
                shutil.rmtree(self.tmp)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            self.group = zarr.open_group(self.tmp, mode="r+")
            # write_empty_chunks is a runtime setting, not stored: set it again on the reopened arrays
            self.meta = self.group["meta"].with_config(STORE_ALL)
            if self.kind == "embed":
                self.emb = self.group["embedding"].with_config(STORE_ALL)
                if self.codec != "fp16":
                    self.scale = self.group["scale"].with_config(STORE_ALL)
        else:
            self.group = zarr.open_group(self.tmp, mode="w")
            n = max(len(self.ids), 1)  # zarr arrays may not be empty-chunked; a 0-image part keeps 1 row
            self.meta = self.group.create_array(
                "meta", shape=(n, META_COLS[self.kind]), chunks=(1, META_COLS[self.kind]),
                dtype="int32", fill_value=0, compressors=[Crc32cCodec()], config=STORE_ALL,
            )
            if self.kind == "embed" and self.codec == "fp16":
                self.emb = self.group.create_array(
                    "embedding", shape=(n, *EMBED_SHAPE), chunks=(1, *EMBED_SHAPE),
                    dtype="float16", fill_value=0, compressors=compressors(2), config=STORE_ALL,
                )
            elif self.kind == "embed":
                # int8 residuals: no shuffle (1-byte values); zstd level 5 packs them tighter than 3
                self.emb = self.group.create_array(
                    "embedding", shape=(n, *EMBED_SHAPE), chunks=(1, *EMBED_SHAPE), dtype="int8", fill_value=0,
                    compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle", typesize=1), Crc32cCodec()],
                    config=STORE_ALL,
                )
                self.scale = self.group.create_array(
                    "scale", shape=(n, EMBED_SHAPE[0]), chunks=(1, EMBED_SHAPE[0]), dtype="float32",
                    fill_value=0, compressors=[Crc32cCodec()], config=STORE_ALL,
                )
            else:
                self.group.require_group("se")
        self.attrs = attrs
        self.group.attrs["s2c"] = attrs

    def status(self) -> np.ndarray:
        """int32 (n,) status per image (0 missing, 1 done, 2 skipped)."""
        if not self.ids:
            return np.zeros(0, np.int32)
        return np.asarray(self.meta[: len(self.ids), 0])

    def todo(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.status() == STATUS_MISSING)]

    def write_embedding(self, i: int, emb: torch.Tensor | np.ndarray, orig_size, input_size) -> None:
        """emb: (256, 64, 64) float; stored with the store's codec (float16 or int8 + scales).
        Sizes are (H, W) / (h, w)."""
        emb = emb.detach().float().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if emb.shape != EMBED_SHAPE:
            raise ValueError(f"embedding of {self.ids[i]} has shape {emb.shape}, expected {EMBED_SHAPE}")
        if self.codec == "fp16":
            self.emb[i] = emb.astype(np.float16)
        else:
            try:
                stored, scale = quantize_int8(emb, self.levels)
            except ValueError as e:
                raise ValueError(f"embedding of {self.ids[i]}: {e}") from None
            self.emb[i] = stored
            self.scale[i] = scale
        self.meta[i] = np.array([STATUS_DONE, *orig_size, *input_size], np.int32)

    def write_se(self, i: int, label_map: np.ndarray) -> None:
        """label_map: integer (H, W), 0 = unassigned, 1..N segments (N = its max)."""
        label_map = np.asarray(label_map)
        n_seg = int(label_map.max()) if label_map.size else 0
        dtype = np.uint16 if n_seg < np.iinfo(np.uint16).max else np.uint32
        if label_map.min(initial=0) < 0:
            raise ValueError(f"SE map of {self.ids[i]} has negative ids")
        se = self.group["se"]
        # overwrite: a rerun after a kill between the data and the flag rewrites the image
        arr = se.create_array(
            str(i), overwrite=True, shape=label_map.shape, chunks=label_map.shape, dtype=dtype, fill_value=0,
            compressors=compressors(np.dtype(dtype).itemsize), config=STORE_ALL,
        )
        arr[...] = label_map.astype(dtype)
        self.meta[i] = np.array([STATUS_DONE, *label_map.shape, n_seg], np.int32)

    def write_skipped(self, i: int, error: str) -> None:
        self.attrs["skipped"] = [s for s in self.attrs["skipped"] if s["id"] != self.ids[i]]
        self.attrs["skipped"].append({"id": self.ids[i], "error": str(error)})
        self.group.attrs["s2c"] = self.attrs
        self.meta[i] = np.array([STATUS_SKIPPED] + [0] * (META_COLS[self.kind] - 1), np.int32)

    def finalize(self) -> Path:
        missing = [self.ids[i] for i in self.todo()]
        if missing:
            raise S2CError(f"{self.tmp}: {len(missing)} images not written (first: {missing[0]}); rerun the job")
        self.attrs["complete"] = True
        self.group.attrs["s2c"] = self.attrs
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out
