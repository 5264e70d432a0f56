"""THE on-disk layout of the SAM caches (embeddings and SE maps), their writer, join, verify and readers.

Layout
------
A *part store* is a Zarr v3 group (``<out>.zarr``) written by exactly one process (parallel writers
into one store corrupt chunks). While a part job runs it writes ``<out>.zarr.partial``; the rename to
``<out>.zarr`` is the last thing it does, so an interrupted job never leaves an output that looks
complete to Snakemake, and a rerun resumes from the partial store (images whose status flag is set
are skipped).

Root attribute ``s2c`` (identity + bookkeeping)::

    {"format": "s2c-sam-cache", "version": CACHE_VERSION, "kind": "embed"|"se",
     "model_type": "vit_t", "checkpoint_sha256": "...", "settings": {...},
     "image_list_hash": "...", "part": K, "parts": N, "ids": [ids of this part, in order],
     "complete": bool, "skipped": [{"id", "error"}]}

Arrays, kind ``embed``:

- ``embedding``: float16 (n, 256, 64, 64), one image per chunk, Blosc-zstd (+ byte shuffle) + crc32c
  (codec ``fp16``, the default; ~1.75 MB per image).
- codecs ``int8`` / ``int6`` (``settings.codec``, ``settings.levels`` = L = 127 / 31, :data:`EMBED_CODECS`):
  ``embedding`` is int8 (n, 256, 64, 64) and ``scale`` float32 (n, 256), one image per chunk, both
  crc32c-checked. Per image and channel c, ``q = round(x / scale[c])`` with
  ``scale[c] = max|x[c]| / L`` (symmetric, so 0 stays exact; q in [-L, L]). The stored bytes are the
  2-D differences ``r = q[i,j] - q[i,j-1] - q[i-1,j] + q[i-1,j-1]`` modulo 256 (plane predictor:
  neighbouring SAM features are correlated, so the residuals compress ~20 % better under zstd);
  a reader undoes them with two cumulative sums modulo 256 and returns ``float16(q * scale)``.
  An fp16 store has no ``codec`` key (stores built before the codec existed read unchanged).
- ``meta``: int32 (n, 5), one row per chunk: ``[status, H, W, h, w]`` — original size (H, W) and the
  size (h, w) of the resized image inside SAM's 1024² padded input (what the decoder needs to map
  masks back: ``sam.postprocess_masks(lowres, (h, w), (H, W))``).

Arrays, kind ``se``:

- ``se/<i>``: uint16 (H, W) label map of image i at its own resolution (uint32 when it has ≥ 65535
  segments, so ids never wrap); 0 = unassigned, 1..N = segments.
- ``meta``: int32 (n, 4), one row per chunk: ``[status, H, W, N]``.

``status`` is 0 = not written yet, 1 = done, 2 = skipped (corrupt image, ``skip_corrupt``). It is
written after the image's data, so a set flag always means the data is complete (Zarr's local store
writes each chunk via a temporary file + rename).

Presence: ``status`` = done is the per-image record that the image's data chunk was written, and
every reader (and ``verify``) checks that chunk exists before reading it. Zarr reads a missing
chunk as the fill value (0), so without this check a deleted chunk would come back as an all-zero
embedding. Arrays are written with ``write_empty_chunks`` so that even an all-zero chunk is stored;
the one exception is an SE map with no segment (``N`` = 0), which older stores did not store and
whose fill value is its data. A chunk that exists but does not decode (truncated, bit rot: the
crc32c codec) is an :class:`S2CError` naming the store and the image, never a raw ``ValueError``.

A *manifest* (``join``) is a JSON file listing the part stores (paths relative to the manifest) with
their ids; readers take a manifest or a single store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec, Crc32cCodec

from ..errors import S2CError
from ..io import atomic_path

CACHE_FORMAT = "s2c-sam-cache"
MANIFEST_FORMAT = "s2c-sam-cache-manifest"
# Bump when the layout or the meaning of stored values changes: readers then refuse old caches.
CACHE_VERSION = 1
KINDS = ("embed", "se")
EMBED_SHAPE = (256, 64, 64)
IDENTITY_KEYS = ("kind", "version", "model_type", "checkpoint_sha256", "settings", "image_list_hash")
#: Embedding codecs (config ``sam.embed_codec``) → quantisation levels L (None: stored as float16).
#: ``int6`` is the int8 layout with 63 levels (-31..31): same arrays, fewer distinct values, ~30 %
#: fewer bytes after zstd. Measured on coco-mini with MobileSAM: ``bench/results/cache_codec.txt``.
EMBED_CODECS: dict[str, int | None] = {"fp16": None, "int8": 127, "int6": 31}

STATUS_MISSING, STATUS_DONE, STATUS_SKIPPED = 0, 1, 2
_META_COLS = {"embed": 5, "se": 4}
# Store every written chunk, even one equal to the fill value, so "done but no chunk" = deleted.
_STORE_ALL = {"write_empty_chunks": True}


def _compressors(typesize: int) -> list:
    # Byte shuffle groups the high/low bytes of fp16/uint16 values, which roughly doubles what zstd
    # saves; crc32c makes `verify` detect silently corrupted chunks.
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=typesize), Crc32cCodec()]


# ---------------------------------------------------------------------------------------------
# embedding codecs
# ---------------------------------------------------------------------------------------------


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

    numpy, single-threaded (~11 ms per image): torch's multi-threaded elementwise ops were 20-60x
    slower than one thread when the cores are busy (DataLoader workers run torch with 1 thread, the
    main process does not)."""
    out = _undo_prediction(stored).astype(np.float32)
    out *= np.asarray(scale, np.float32)[:, None, None]
    return torch.from_numpy(out.astype(np.float16))


# ---------------------------------------------------------------------------------------------
# identity helpers
# ---------------------------------------------------------------------------------------------


def part_ids(ids: Sequence[str], part: int, parts: int) -> list[str]:
    """The deterministic contiguous slice of ``ids`` that part ``part`` of ``parts`` processes."""
    if parts < 1 or not 0 <= part < parts:
        raise S2CError(f"--part {part} / --parts {parts}: need parts >= 1 and 0 <= part < parts")
    n = len(ids)
    return list(ids[part * n // parts : (part + 1) * n // parts])


def make_identity(
    kind: str, model_type: str, checkpoint_sha256: str, settings: dict, image_list_hash: str
) -> dict:
    """The attribute set that identifies what built a cache (compared key by key by the readers)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "kind": kind,
        "version": CACHE_VERSION,
        "model_type": str(model_type),
        "checkpoint_sha256": str(checkpoint_sha256),
        # JSON round trip: tuples become lists, so a fresh dict compares equal to a stored one.
        "settings": json.loads(json.dumps(settings, sort_keys=True)),
        "image_list_hash": str(image_list_hash),
    }


def _diff(expected: Any, found: Any, prefix: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for k in sorted(set(expected) | set(found)):
            out += _diff(expected.get(k, "<absent>"), found.get(k, "<absent>"), f"{prefix}.{k}")
        return out
    if expected != found:
        return [f"{prefix}: cache has {found!r}, config expects {expected!r}"]
    return []


def check_identity(found: dict, expect: dict | None, where: str | os.PathLike) -> None:
    """Raise S2CError naming the store, the first mismatching key and the fix.

    Only keys present in ``expect`` are compared (``version`` is always checked against the code).
    """
    expect = dict(expect or {})
    expect.setdefault("version", CACHE_VERSION)
    problems = []
    for key, val in expect.items():
        if key == "settings":
            val = json.loads(json.dumps(val, sort_keys=True))
        problems += _diff(val, found.get(key, "<absent>"), key)
    if problems:
        kind = found.get("kind", "?")
        rule = "sam_embed" if kind == "embed" else "sam_everything"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise S2CError(
            f"SAM cache {where} does not match the config: {problems[0]}{more}; "
            f"delete it and rerun the {rule} rules (or point the config at the matching cache)"
        )


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------


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
            self.meta = self.group["meta"].with_config(_STORE_ALL)
            if self.kind == "embed":
                self.emb = self.group["embedding"].with_config(_STORE_ALL)
                if self.codec != "fp16":
                    self.scale = self.group["scale"].with_config(_STORE_ALL)
        else:
            self.group = zarr.open_group(self.tmp, mode="w")
            n = max(len(self.ids), 1)  # zarr arrays may not be empty-chunked; a 0-image part keeps 1 row
            self.meta = self.group.create_array(
                "meta", shape=(n, _META_COLS[self.kind]), chunks=(1, _META_COLS[self.kind]),
                dtype="int32", fill_value=0, compressors=[Crc32cCodec()], config=_STORE_ALL,
            )
            if self.kind == "embed" and self.codec == "fp16":
                self.emb = self.group.create_array(
                    "embedding", shape=(n, *EMBED_SHAPE), chunks=(1, *EMBED_SHAPE),
                    dtype="float16", fill_value=0, compressors=_compressors(2), config=_STORE_ALL,
                )
            elif self.kind == "embed":
                # int8 residuals: no shuffle (1-byte values), zstd level 5 (measured: ~2 % smaller than 3)
                self.emb = self.group.create_array(
                    "embedding", shape=(n, *EMBED_SHAPE), chunks=(1, *EMBED_SHAPE), dtype="int8", fill_value=0,
                    compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle", typesize=1), Crc32cCodec()],
                    config=_STORE_ALL,
                )
                self.scale = self.group.create_array(
                    "scale", shape=(n, EMBED_SHAPE[0]), chunks=(1, EMBED_SHAPE[0]), dtype="float32",
                    fill_value=0, compressors=[Crc32cCodec()], config=_STORE_ALL,
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
            compressors=_compressors(np.dtype(dtype).itemsize), config=_STORE_ALL,
        )
        arr[...] = label_map.astype(dtype)
        self.meta[i] = np.array([STATUS_DONE, *label_map.shape, n_seg], np.int32)

    def write_skipped(self, i: int, error: str) -> None:
        self.attrs["skipped"] = [s for s in self.attrs["skipped"] if s["id"] != self.ids[i]]
        self.attrs["skipped"].append({"id": self.ids[i], "error": str(error)})
        self.group.attrs["s2c"] = self.attrs
        self.meta[i] = np.array([STATUS_SKIPPED] + [0] * (_META_COLS[self.kind] - 1), np.int32)

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


# ---------------------------------------------------------------------------------------------
# reading store / manifest descriptions
# ---------------------------------------------------------------------------------------------


def read_store_attrs(store: str | os.PathLike) -> dict:
    store = Path(store)
    if not store.exists():
        hint = " (an interrupted job left a .partial store; rerun it)" if partial_path(store).exists() else ""
        raise S2CError(f"SAM cache store not found: {store}{hint}")
    try:
        attrs = dict(zarr.open_group(store, mode="r").attrs).get("s2c")
    except Exception as e:
        raise S2CError(f"{store} is not a readable Zarr store ({e.__class__.__name__}: {e}); rerun its job") from None
    if not attrs or attrs.get("format") != CACHE_FORMAT:
        raise S2CError(f"{store} is not an s2c SAM cache (no 's2c' attributes); point to a sam_embed/sam_everything output")
    return attrs


def load_cache_info(path: str | os.PathLike) -> dict:
    """Describe a manifest (JSON) or a single part store uniformly.

    Returns ``{identity keys..., "parts": [{"path": Path, "ids": [...]}], "skipped": [...]}``.
    """
    path = Path(path)
    if path.is_file():
        try:
            man = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise S2CError(f"cannot read SAM cache manifest {path} ({e}); rerun the sam_cache join rule") from None
        if man.get("format") != MANIFEST_FORMAT:
            raise S2CError(f"{path} is not an s2c SAM cache manifest; pass the output of `s2c sam_cache join`")
        info = {k: man.get(k) for k in IDENTITY_KEYS}
        info["parts"] = [{"path": (path.parent / p["path"]).resolve(), "ids": p["ids"]} for p in man["parts"]]
        info["skipped"] = man.get("skipped", [])
        return info
    attrs = read_store_attrs(path)
    if not attrs.get("complete"):
        raise S2CError(f"SAM cache store {path} is incomplete; rerun its job")
    info = {k: attrs.get(k) for k in IDENTITY_KEYS}
    info["parts"] = [{"path": path.resolve(), "ids": attrs["ids"]}]
    info["skipped"] = attrs.get("skipped", [])
    return info


def join_parts(kind: str, stores: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Check that ``stores`` are the complete, consistent parts 0..N-1 of one cache; write a manifest.

    Returns the manifest dict. Paths inside it are relative to the manifest's folder.
    """
    out = Path(out)
    if not stores:
        raise S2CError("join: no part stores given (--parts)")
    entries, first = [], None
    for s in stores:
        a = read_store_attrs(s)
        if not a.get("complete"):
            raise S2CError(f"join: part store {s} is incomplete; rerun its job")
        if a.get("kind") != kind:
            raise S2CError(f"join: {s} holds kind {a.get('kind')!r}, not {kind!r}; pass the {kind} part stores")
        if first is None:
            first = (s, a)
        else:
            check_identity(a, {k: first[1][k] for k in IDENTITY_KEYS}, s)
        entries.append((int(a["part"]), int(a["parts"]), Path(s), a))
    n_parts = entries[0][1]
    got = sorted(e[0] for e in entries)
    if any(e[1] != n_parts for e in entries) or got != list(range(n_parts)):
        raise S2CError(f"join: parts {got} of {[e[1] for e in entries]} given; need each of 0..{n_parts - 1} exactly once")
    entries.sort(key=lambda e: e[0])
    seen: set[str] = set()
    for _, _, p, a in entries:
        dup = seen.intersection(a["ids"])
        if dup:
            raise S2CError(f"join: id {sorted(dup)[0]} appears in two parts (second: {p}); rebuild the parts")
        seen.update(a["ids"])
    a0 = entries[0][3]
    rel_root = out.parent.resolve()
    manifest = {
        "format": MANIFEST_FORMAT,
        **{k: a0[k] for k in IDENTITY_KEYS},
        "n_images": sum(len(e[3]["ids"]) for e in entries),
        "parts": [{"path": os.path.relpath(p.resolve(), rel_root), "ids": a["ids"]} for _, _, p, a in entries],
        "skipped": [s for e in entries for s in e[3].get("skipped", [])],
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


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


def transcode_embeddings(src: str | os.PathLike, out: str | os.PathLike, codec: str, levels: int | None = None,
                         progress: bool = False) -> Path:
    """Rewrite the embedding part store ``src`` with another codec into the part store ``out``.

    Same ids, part, sizes and skipped images; the identity differs only in ``settings`` (the codec
    keys), so readers that expect one codec refuse the other. Converts an existing fp16 cache
    without re-running the encoder. For a manifest, transcode each part store and join them.
    """
    a = read_store_attrs(src)
    if a.get("kind") != "embed" or not a.get("complete"):
        raise S2CError(f"transcode: {src} is not a complete embedding part store")
    settings = {k: v for k, v in a["settings"].items() if k not in ("codec", "levels")}
    identity = {k: a[k] for k in IDENTITY_KEYS}
    identity["settings"] = {**settings, **codec_settings(codec, levels)}
    reader = EmbeddingReader(src)
    w = PartWriter(out, identity, a["ids"], a["part"], a["parts"])
    skipped = {s["id"]: s["error"] for s in a.get("skipped", [])}
    for i in tqdm(w.todo(), desc=f"transcode {Path(src).name} → {codec}", disable=not progress):
        id_ = w.ids[i]
        if id_ in skipped:
            w.write_skipped(i, skipped[id_])
            continue
        m = reader.meta(id_)
        w.write_embedding(i, reader.embedding(id_), m["orig_size"], m["input_size"])
    return w.finalize()


def open_reader(path: str | os.PathLike, expect: dict | None = None) -> EmbeddingReader | SEMapReader:
    """Open the right reader for a manifest or store, whichever kind it holds."""
    kind = load_cache_info(path).get("kind")
    return (EmbeddingReader if kind == "embed" else SEMapReader)(path, expect)


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


def verify(path: str | os.PathLike, expect: dict | None = None, progress: bool = False) -> dict:
    """Check a manifest or store is complete and every image's data decodes with the right shape.

    Returns ``{"kind", "n_images", "n_skipped", "bytes"}``; raises S2CError on the first problem.
    """
    path = Path(path)
    info = load_cache_info(path)
    for p in info["parts"]:
        a = read_store_attrs(p["path"])
        if not a.get("complete"):
            raise S2CError(f"verify: part store {p['path']} is incomplete; rerun its job")
        check_identity(a, {k: info[k] for k in IDENTITY_KEYS}, p["path"])
        if a["ids"] != p["ids"]:
            raise S2CError(f"verify: ids of {p['path']} differ from the manifest {path}; rerun the join")
    reader = open_reader(path, expect)
    n_bytes = sum(f.stat().st_size for p in info["parts"] for f in Path(p["path"]).rglob("*") if f.is_file())
    for pi, p in enumerate(info["parts"]):
        g = reader._group(pi)
        try:
            status = np.asarray(g["meta"][: len(p["ids"]), 0]) if p["ids"] else np.zeros(0)
        except Exception as e:
            raise S2CError(f"verify: the meta array of {p['path']} is unreadable ({e.__class__.__name__}: {e}); "
                           "delete the store and rerun its job") from None
        bad = np.flatnonzero((status != STATUS_DONE) & (status != STATUS_SKIPPED))
        if bad.size:
            raise S2CError(f"verify: image {p['ids'][bad[0]]} in {p['path']} has no data (status {status[bad[0]]}); rerun its job")
    for id_ in tqdm(reader.ids, desc=f"verify {path.name}", disable=not progress):
        try:
            if reader.kind == "embed":
                e = reader.embedding(id_)
                m = reader.meta(id_)
                ok = tuple(e.shape) == EMBED_SHAPE and bool(torch.isfinite(e).all())
                ok = ok and min(m["orig_size"]) > 0 and max(m["input_size"]) > 0
            else:
                s = reader.se_map(id_)
                m = reader.meta(id_)
                ok = tuple(s.shape) == m["orig_size"] and int(s.max(initial=0)) == m["n_segments"]
                ok = ok and int(s.min(initial=0)) >= 0
        except S2CError:
            raise
        except Exception as e:
            raise S2CError(f"verify: image {id_} in {path} is unreadable ({e.__class__.__name__}: {e}); delete the store and rerun its job") from None
        if not ok:
            raise S2CError(f"verify: image {id_} in {path} has inconsistent data; delete the store and rerun its job")
    return {"kind": reader.kind, "n_images": len(reader.ids), "n_skipped": len(reader.skipped), "bytes": n_bytes}

