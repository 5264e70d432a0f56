"""The SAM caches (embeddings and SE maps): their on-disk layout (this docstring, the one place it
is written down) and, one module per job, ``layout`` (names and constants), ``codec``,
``identity``, ``writer``, ``join``, ``readers``, ``transcode`` and ``verify``.

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
  (codec ``fp16``, the default).
- codecs ``int8`` / ``int6`` (``settings.codec``, ``settings.levels`` = L = 127 / 31, :data:`EMBED_CODECS`):
  ``embedding`` is int8 (n, 256, 64, 64) and ``scale`` float32 (n, 256), one image per chunk, both
  crc32c-checked. Per image and channel c, ``q = round(x / scale[c])`` with
  ``scale[c] = max|x[c]| / L`` (symmetric, so 0 stays exact; q in [-L, L]). The stored bytes are the
  2-D differences ``r = q[i,j] - q[i,j-1] - q[i-1,j] + q[i-1,j-1]`` modulo 256 (plane predictor:
  neighbouring SAM features are correlated, so the residuals compress better under zstd);
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

from .codec import codec_settings, dequantize_int8, dequantize_int8_half, quantize_int8, store_codec
from .identity import check_identity, make_identity, part_ids
from .join import join_parts, load_cache_info, read_store_attrs
from .layout import (CACHE_FORMAT, CACHE_VERSION, EMBED_CODECS, EMBED_SHAPE, IDENTITY_KEYS, KINDS, MANIFEST_FORMAT,
                     STATUS_DONE, STATUS_MISSING, STATUS_SKIPPED)
from .readers import EmbeddingReader, SEMapReader, open_reader
from .transcode import transcode_embeddings
from .verify import verify
from .writer import PartWriter, partial_path

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "EMBED_CODECS", "EMBED_SHAPE", "IDENTITY_KEYS", "KINDS", "MANIFEST_FORMAT",
           "STATUS_DONE", "STATUS_MISSING", "STATUS_SKIPPED", "EmbeddingReader", "PartWriter", "SEMapReader",
           "check_identity", "codec_settings", "dequantize_int8", "dequantize_int8_half", "join_parts",
           "load_cache_info", "make_identity", "open_reader", "part_ids", "partial_path", "quantize_int8",
           "read_store_attrs", "store_codec", "transcode_embeddings", "verify"]
