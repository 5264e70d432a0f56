"""Names and constants of the cache layout (the layout itself: :mod:`s2c.sam.cache`)."""

from __future__ import annotations

from zarr.codecs import BloscCodec, Crc32cCodec

CACHE_FORMAT = "s2c-sam-cache"
MANIFEST_FORMAT = "s2c-sam-cache-manifest"
# Bump when the layout or the meaning of stored values changes: readers then refuse old caches.
CACHE_VERSION = 1
KINDS = ("embed", "se")
EMBED_SHAPE = (256, 64, 64)
IDENTITY_KEYS = ("kind", "version", "model_type", "checkpoint_sha256", "settings", "image_list_hash")
#: Embedding codecs (config ``sam.embed_codec``) → quantisation levels L (None: stored as float16).
#: ``int6`` is the int8 layout with 63 levels (-31..31): same arrays, fewer distinct values, fewer
#: bytes after zstd (the sizes and the agreement of each: ``bench/cache_codec.py``).
EMBED_CODECS: dict[str, int | None] = {"fp16": None, "int8": 127, "int6": 31}

STATUS_MISSING, STATUS_DONE, STATUS_SKIPPED = 0, 1, 2
META_COLS = {"embed": 5, "se": 4}
# Store every written chunk, even one equal to the fill value, so "done but no chunk" = deleted.
STORE_ALL = {"write_empty_chunks": True}


def compressors(typesize: int) -> list:
    # Byte shuffle groups the high/low bytes of fp16/uint16 values, which roughly doubles what zstd
    # saves; crc32c makes `verify` detect silently corrupted chunks.
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=typesize), Crc32cCodec()]
