"""Store and manifest descriptions, and the join of part stores into a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import zarr

from ...errors import S2CError
from ...io import atomic_path
from .identity import check_identity
from .layout import CACHE_FORMAT, IDENTITY_KEYS, MANIFEST_FORMAT
from .writer import partial_path


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
