"""Re-encode an fp16 embedding store with another codec, without re-running the encoder."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from ...errors import S2CError
from .codec import codec_settings
from .join import read_store_attrs
from .layout import IDENTITY_KEYS
from .readers import EmbeddingReader
from .writer import PartWriter


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
