"""SAM image embeddings of one part of a split, into one Zarr part store.

    s2c sam_embed --data-cfg JSON --split train --part 0 --parts 4 \\
        --out cache/train/embed.part0.zarr --weights-dir weights --cfg '{}' --device auto

Part ``K`` of ``N`` takes the contiguous slice ``ids[K*n//N:(K+1)*n//N]`` (:func:`s2c.sam.cache.part_ids`).
The job writes ``<out>.partial`` and renames it to ``<out>`` at the end; a rerun after a kill
resumes from the partial store. The store layout is documented in :mod:`s2c.sam.cache`.

Config (the ``sam`` section; defaults in :data:`s2c.sections.SAM_EMBED_DEFAULTS`):

- ``model_type``: vit_h | vit_l | vit_b | vit_t (MobileSAM) | vit_test (tiny random, tests).
- ``checkpoint``: SAM weights; None with vit_t provisions MobileSAM into ``--weights-dir``.
- ``batch_size``: images per encoder call.
- ``amp``: bfloat16 autocast for the encoder on CUDA (embeddings are stored fp16 anyway).
- ``skip_corrupt``: a corrupt image fails the job naming the file; when true it is
  skipped and listed in the store attributes (``skipped``) and the manifest.
- ``num_workers``: image-decoding worker processes.
- ``embed_codec``: how the store keeps the embeddings (:data:`s2c.sam.cache.EMBED_CODECS`):
  ``fp16``, or ``int8`` / ``int6`` per-channel quantised (smaller stores; sizes and CPM agreement
  in docs/RESULTS.md). Recorded in the store's settings; readers decode each.
Other keys of the ``sam`` section (``parts``, ``everything``) are accepted and ignored.
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
from ..errors import cli_main
from ..sam.build import RANDOM_CHECKPOINT, load_sam, resolve_device
from ..sam.cache import PartWriter, codec_settings, make_identity
from ..sam.parts import add_part_args, embed_settings, handle_corrupt, iter_images, open_part
from ..sam.prompt import encode_images, sam_input_size
from ..sections import SAM_EMBED_DEFAULTS as EMBED_DEFAULTS

log = logging.getLogger(__name__)

# Keys of the config's `sam` section that belong to other stages / the workflow.
_SAM_SECTION_OTHER = {"parts", "everything"}
__all__ = ["EMBED_DEFAULTS", "RANDOM_CHECKPOINT", "embed_settings", "run_sam_embed", "main"]


def run_sam_embed(
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
) -> Path:
    """Encode part ``part``/``parts`` of ``split`` into the store ``out``; returns ``out``.

    ``sam`` + ``checkpoint_sha256`` inject a prebuilt model (tests); otherwise it is built from
    ``cfg``. Embeddings: float16 (256, 64, 64) per image, meta = original and resized input size.
    """
    cfg = merge_section(EMBED_DEFAULTS, cfg, "sam", ignore=_SAM_SECTION_OTHER)
    ds, ids = open_part(data_cfg, split, part, parts)
    if sam is None:
        sam, checkpoint_sha256 = load_sam(cfg["model_type"], cfg["checkpoint"], weights_dir, str(resolve_device(device)))
    settings = {**embed_settings(), **codec_settings(cfg["embed_codec"])}
    identity = make_identity("embed", cfg["model_type"], checkpoint_sha256 or RANDOM_CHECKPOINT, settings, ds.image_list_hash())
    writer = PartWriter(out, identity, ids, part, parts)
    todo = writer.todo()
    if writer.resumed:
        log.info("resuming %s: %d of %d images left", writer.tmp, len(todo), len(ids))
    amp = torch.bfloat16 if cfg["amp"] else None
    img_size = sam.image_encoder.img_size
    with tqdm(total=len(todo), desc=f"sam_embed {split} part {part}/{parts}", disable=not progress) as bar:
        for batch in iter_images(ds, ids, todo, cfg["batch_size"], cfg["num_workers"]):
            good = [(i, im) for i, im, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    handle_corrupt(writer, i, err, cfg["skip_corrupt"])
            if good:
                emb = encode_images(sam, [im for _, im in good], amp_dtype=amp).cpu()
                for (i, im), e in zip(good, emb):
                    writer.write_embedding(i, e, im.shape[:2], sam_input_size(im.shape[:2], img_size))
            bar.update(len(batch))
    return writer.finalize()


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c sam_embed", description=__doc__.split("\n")[0])
    add_part_args(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = run_sam_embed(
        parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.part, a.parts, a.out, a.weights_dir,
        parse_json_arg(a.cfg, "--cfg"), a.device,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
