"""Lazy, picklable readers of a manifest or store (what the trainer streams), and transcoding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ...errors import S2CError
from .codec import dequantize_int8_half, store_codec
from .identity import check_identity
from .join import load_cache_info
from .layout import IDENTITY_KEYS, STATUS_DONE


class _CacheReader:
    """Lazy, picklable reader base: Zarr groups are opened on first use in each process."""

    kind = ""

    def __init__(self, manifest: str | os.PathLike, expect: dict | None = None):
        self.path = Path(manifest)
        info = load_cache_info(self.path)
        if info.get("kind") != self.kind:
            raise S2CError(
                f"{self.path} holds a {info.get('kind')!r} cache, not {self.kind!r}; "
                f"pass the {'embeddings' if self.kind == 'embed' else 'SE-map'} manifest"
            )
        check_identity(info, expect, self.path)
        self.identity = {k: info[k] for k in IDENTITY_KEYS}
        self.skipped = {s["id"]: s["error"] for s in info["skipped"]}
        self._parts = [str(p["path"]) for p in info["parts"]]
        self._where: dict[str, tuple[int, int]] = {}
        for pi, p in enumerate(info["parts"]):
            for li, id_ in enumerate(p["ids"]):
                if id_ not in self.skipped:
                    self._where[id_] = (pi, li)
        self.ids = list(self._where)
        self._groups: dict[int, Any] | None = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: str) -> bool:
        return id_ in self._where

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_groups"], state["_pid"] = None, None
        return state

    def _group(self, pi: int):
        # Re-open after a fork: handles must not be shared between DataLoader workers.
        if self._groups is None or self._pid != os.getpid():
            self._groups, self._pid = {}, os.getpid()
        g = self._groups.get(pi)
        if g is None:
            try:
                g = zarr.open_group(self._parts[pi], mode="r")
            except Exception as e:
                raise S2CError(f"cannot open SAM cache part {self._parts[pi]} ({e}); rerun its job and join") from None
            self._groups[pi] = g
        return g

    def _locate(self, id_: str) -> tuple[Any, int]:
        try:
            pi, li = self._where[id_]
        except KeyError:
            if id_ in self.skipped:
                raise S2CError(f"image {id_} was skipped when building {self.path} ({self.skipped[id_]}); set "
                               "data.skip_corrupt: true so that the split itself drops unreadable images") from None
            raise S2CError(f"image id {id_!r} is not in SAM cache {self.path}; rebuild the cache for this image list") from None
        return self._group(pi), li

    def _part_of(self, id_: str) -> str:
        return self._parts[self._where[id_][0]]

    def _corrupt(self, id_: str, what: str) -> S2CError:
        part = self._part_of(id_)
        where = part if Path(part) == self.path.resolve() else f"{part} (part of {self.path})"
        return S2CError(
            f"SAM cache store {where}, image {id_}: {what}; the store is damaged — delete it and rerun its "
            f"{'sam_embed' if self.kind == 'embed' else 'sam_everything'} job "
            f"(`s2c sam_cache verify {self.path}` checks every image)"
        )

    def _read(self, id_: str, arr, sel):
        """``arr[sel]`` as numpy; an undecodable chunk (truncated, corrupt) → S2CError naming the store."""
        try:
            return np.asarray(arr[sel])
        except S2CError:
            raise
        except Exception as e:
            raise self._corrupt(id_, f"unreadable data in {arr.path} ({e.__class__.__name__}: {e})") from None

    def _require_chunk(self, id_: str, arr, coords: tuple[int, ...]) -> None:
        """The chunk at ``coords`` must exist: Zarr would read a deleted chunk as zeros."""
        key = arr.metadata.encode_chunk_key(coords)
        if not (Path(self._part_of(id_)) / arr.path / key).is_file():
            raise self._corrupt(id_, f"missing chunk {arr.path}/{key} (data deleted)")

    def _array(self, id_: str, g, name: str):
        try:
            return g[name]
        except KeyError:
            raise self._corrupt(id_, f"missing array {name}") from None

    def _meta_row(self, id_: str) -> np.ndarray:
        g, li = self._locate(id_)
        meta = self._array(id_, g, "meta")
        row = self._read(id_, meta, li)
        if row[0] != STATUS_DONE:
            if not (Path(self._part_of(id_)) / meta.path / meta.metadata.encode_chunk_key((li, 0))).is_file():
                raise self._corrupt(id_, "missing meta row (data deleted)")
            raise S2CError(f"image {id_} is not marked done in {self._part_of(id_)}; rerun its job")
        return row


class EmbeddingReader(_CacheReader):
    """Cached SAM image embeddings. ``embedding(id) -> float16 tensor (256, 64, 64)``."""

    kind = "embed"

    @property
    def codec(self) -> str:
        """The store's embedding codec (a key of :data:`EMBED_CODECS`); the reader decodes each."""
        return store_codec(self.identity["settings"])[0]

    def embedding(self, id_: str) -> torch.Tensor:
        """float16 (256, 64, 64); S2CError when the image's chunk is missing or does not decode."""
        self._meta_row(id_)  # done flag set (the image was written)
        g, li = self._locate(id_)
        arr = self._array(id_, g, "embedding")
        codec = self.codec
        want = "float16" if codec == "fp16" else "int8"
        if str(arr.dtype) != want:
            raise self._corrupt(id_, f"embedding array of dtype {arr.dtype} where codec {codec!r} stores {want}")
        self._require_chunk(id_, arr, (li, 0, 0, 0))
        if codec == "fp16":
            return torch.from_numpy(self._read(id_, arr, li))
        sc = self._array(id_, g, "scale")
        self._require_chunk(id_, sc, (li, 0))
        return dequantize_int8_half(self._read(id_, arr, li), self._read(id_, sc, li))

    def meta(self, id_: str) -> dict:
        """``{"orig_size": (H, W), "input_size": (h, w)}`` (h, w: resized image inside the 1024² input)."""
        row = self._meta_row(id_)
        return {"orig_size": (int(row[1]), int(row[2])), "input_size": (int(row[3]), int(row[4]))}


class SEMapReader(_CacheReader):
    """Cached segment-everything label maps. ``se_map(id) -> int32 (H, W)``, 0 = unassigned."""

    kind = "se"

    def se_map(self, id_: str) -> np.ndarray:
        """int32 (H, W); S2CError when the image's map is missing or does not decode."""
        row = self._meta_row(id_)
        g, li = self._locate(id_)
        arr = self._array(id_, g, f"se/{li}")
        if int(row[3]) > 0:  # a map without segments is all fill value (older stores did not store it)
            self._require_chunk(id_, arr, (0,) * arr.ndim)
        m = self._read(id_, arr, Ellipsis).astype(np.int32)
        if m.shape != (int(row[1]), int(row[2])):
            raise self._corrupt(id_, f"SE map of shape {m.shape} where meta records {(int(row[1]), int(row[2]))}")
        return m

    def meta(self, id_: str) -> dict:
        """``{"orig_size": (H, W), "n_segments": N}``."""
        row = self._meta_row(id_)
        return {"orig_size": (int(row[1]), int(row[2])), "n_segments": int(row[3])}


def open_reader(path: str | os.PathLike, expect: dict | None = None) -> EmbeddingReader | SEMapReader:
    """Open the right reader for a manifest or store, whichever kind it holds."""
    kind = load_cache_info(path).get("kind")
    return (EmbeddingReader if kind == "embed" else SEMapReader)(path, expect)
