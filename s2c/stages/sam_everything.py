"""Segment-everything label maps of one part of a split, into one Zarr store.

    s2c sam_everything --data-cfg JSON --split train --part 0 --parts 4 \\
        --out cache/train/se.part0.zarr --weights-dir weights --cfg '{"everything": {...}}' --device auto

Same part slicing, ``<out>.partial`` + rename, resume and corrupt-image handling as
:mod:`s2c.stages.sam_embed`. Each image's map is SAM automatic mask generation on the original image,
merged by the ``overlap`` rule (:mod:`s2c.sam.everything`), stored at the image's resolution.

Config (the ``sam`` section; defaults in :data:`s2c.sections.SAM_EVERYTHING_DEFAULTS`, those of
``everything`` in :data:`s2c.defaults.EVERYTHING_DEFAULTS`): ``model_type``, ``checkpoint``,
``skip_corrupt``, ``num_workers``, ``everything``: ``impl`` (fast | stock), ``points_per_side``,
``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``,
``box_nms_thresh``, ``min_mask_region_area``, ``overlap`` (smallest_area | predicted_iou),
``skip_covered``, ``stability_margin``, ``fast_points_per_batch`` (None: chosen by device),
``shared_decoder``, ``reuse_embedding`` (decode from ``--embed-store``, the
:mod:`s2c.stages.sam_embed` part store of the same split and part, instead of encoding each image again;
recorded in the store identity because fp16 embeddings shift a few mask borders); ``embed_codec``:
the codec of that embedding store (``sam.embed_codec``: the store must carry it; a
quantised one is also recorded in the SE identity, ``settings.embed_codec``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli import parse_json_arg
from ..config import merge_section
from ..defaults import decodes_cached_embedding, everything_settings, resolve_everything_cfg
from ..errors import S2CError, cli_main
from ..sam.build import RANDOM_CHECKPOINT, load_sam, resolve_device
from ..sam.cache import EmbeddingReader, PartWriter, codec_settings, make_identity
from ..sam.everything import se_map
from ..sam.parts import add_part_args, embed_settings, handle_corrupt, iter_images, open_part
from ..sections import SAM_EVERYTHING_DEFAULTS as SE_DEFAULTS

log = logging.getLogger(__name__)

_SAM_SECTION_OTHER = {"parts", "batch_size", "amp"}


def run_sam_everything(
    data_cfg: dict,
    split: str,
    part: int,
    parts: int,
    out: str | os.PathLike,
    weights_dir: str | os.PathLike,
    cfg: dict | None = None,
    device: str = "auto",
    sam: torch.nn.Module | None = None,
    checkpoint_sha256: str | None = None,
    progress: bool = True,
    embed_store: str | os.PathLike | None = None,
) -> Path:
    """Write the SE maps of part ``part``/``parts`` of ``split`` into the store ``out``; returns ``out``.

    ``sam`` + ``checkpoint_sha256`` inject a prebuilt model (tests). ``embed_store``: the embedding
    store (part store or manifest) to decode from when ``everything.reuse_embedding`` is on; it must
    have been built by the same SAM checkpoint over the same image list.
    """
    cfg = merge_section(SE_DEFAULTS, cfg, "sam", ignore=_SAM_SECTION_OTHER)
    ev = resolve_everything_cfg(cfg["everything"])
    ds, ids = open_part(data_cfg, split, part, parts)
    if sam is None:
        sam, checkpoint_sha256 = load_sam(cfg["model_type"], cfg["checkpoint"], weights_dir, str(resolve_device(device)))
    se_settings = everything_settings(ev)
    if decodes_cached_embedding(ev) and codec_settings(cfg["embed_codec"]):  # fp16: identities as before
        se_settings = {**se_settings, "embed_codec": cfg["embed_codec"]}
    identity = make_identity("se", cfg["model_type"], checkpoint_sha256 or RANDOM_CHECKPOINT, se_settings, ds.image_list_hash())
    embeddings = None
    if decodes_cached_embedding(ev):
        if embed_store is None:
            raise S2CError("sam.everything.reuse_embedding is true: pass --embed-store (the sam_embed store of "
                           "this split and part) or set sam.everything.reuse_embedding: false")
        embeddings = EmbeddingReader(embed_store, make_identity(
            "embed", cfg["model_type"], checkpoint_sha256 or RANDOM_CHECKPOINT,
            {**embed_settings(), **codec_settings(cfg["embed_codec"])}, ds.image_list_hash()))
    writer = PartWriter(out, identity, ids, part, parts)
    todo = writer.todo()
    if writer.resumed:
        log.info("resuming %s: %d of %d images left", writer.tmp, len(todo), len(ids))
    with tqdm(total=len(todo), desc=f"sam_everything {split} part {part}/{parts}", disable=not progress) as bar:
        for batch in iter_images(ds, ids, todo, 1, cfg["num_workers"]):
            for i, im, err in batch:
                if err is not None:
                    handle_corrupt(writer, i, err, cfg["skip_corrupt"])
                else:
                    emb = embeddings.embedding(ids[i]) if embeddings is not None else None
                    writer.write_se(i, se_map(sam, im, ev, embedding=emb))
                bar.update(1)
    return writer.finalize()


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c sam_everything", description=__doc__.split("\n")[0])
    add_part_args(p)
    p.add_argument("--embed-store", type=Path, default=None,
                   help="embedding store of the same split/part to decode from (sam.everything.reuse_embedding)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = run_sam_everything(
        parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.part, a.parts, a.out, a.weights_dir,
        parse_json_arg(a.cfg, "--cfg"), a.device, embed_store=a.embed_store,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
