"""``verify``: a manifest or store complete, every done image's data present and decodable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...errors import S2CError
from .identity import check_identity
from .join import load_cache_info, read_store_attrs
from .layout import EMBED_SHAPE, IDENTITY_KEYS, STATUS_DONE, STATUS_SKIPPED
from .readers import open_reader


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
