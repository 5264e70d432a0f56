"""Stage ``sam_embed``: SAM image embeddings of one part of a split, into one Zarr part store.

    python -m s2c.sam_embed --data-cfg JSON --split train --part 0 --parts 4 \\
        --out cache/train/embed.part0.zarr --weights-dir weights --cfg '{}' --device auto

Part ``K`` of ``N`` takes the contiguous slice ``ids[K*n//N:(K+1)*n//N]`` (:func:`s2c.sam.cache.part_ids`).
The job writes ``<out>.partial`` and renames it to ``<out>`` at the end; a rerun after a kill
resumes from the partial store. The store layout is documented in :mod:`s2c.sam.cache`.

Config (the ``sam`` section; defaults in :data:`EMBED_DEFAULTS`):

- ``model_type`` (``vit_t``): vit_h | vit_l | vit_b | vit_t (MobileSAM) | vit_test (tiny random, tests).
- ``checkpoint`` (``None``): SAM weights; None with vit_t provisions MobileSAM into ``--weights-dir``.
- ``batch_size`` (4): images per encoder call.
- ``amp`` (``False``): bfloat16 autocast for the encoder on CUDA (embeddings are stored fp16 anyway).
- ``skip_corrupt`` (``False``): a corrupt image fails the job naming the file; when true it is
  skipped and listed in the store attributes (``skipped``) and the manifest.
- ``num_workers`` (2): image-decoding worker processes.
Other keys of the ``sam`` section (``parts``, ``everything``) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .config import merge_section
from .errors import S2CError, cli_main
from .sam.cache import PartWriter, make_identity, part_ids

log = logging.getLogger(__name__)

EMBED_DEFAULTS: dict[str, Any] = {
    "model_type": "vit_t",
    "checkpoint": None,
    "batch_size": 4,
    "amp": False,
    "skip_corrupt": False,
    "num_workers": 2,
}
# Keys of the config's `sam` section that belong to other stages / the workflow.
_SAM_SECTION_OTHER = {"parts", "everything"}
RANDOM_CHECKPOINT = "random-init"  # checkpoint_sha256 recorded for model_type vit_test


def embed_settings() -> dict:
    """The settings recorded in an embedding store's identity (what changes the stored values)."""
    return {"img_size": 1024, "dtype": "float16"}


def load_sam(cfg: dict, weights_dir: str | os.PathLike, device: str) -> tuple[torch.nn.Module, str]:
    """Build the configured SAM on ``device``; returns (sam, checkpoint sha256)."""
    from .sam.build import TEST_MODEL_TYPES, build_sam
    from .weights import cached_sha256, resolve_sam_checkpoint

    if cfg["model_type"] in TEST_MODEL_TYPES:
        torch.manual_seed(0)  # identical random weights in every part job
        return build_sam(cfg["model_type"], None, device), RANDOM_CHECKPOINT
    ckpt = resolve_sam_checkpoint(cfg["model_type"], cfg["checkpoint"], weights_dir)
    return build_sam(cfg["model_type"], ckpt, device), cached_sha256(ckpt)


def expected_identity(
    kind: str, sam_cfg: dict, data_cfg: dict, split: str, weights_dir: str | os.PathLike
) -> dict:
    """The identity a cache built from this config must have; pass it as the readers' ``expect=``.

    ``kind`` is "embed" or "se"; ``sam_cfg`` is the config's ``sam`` section.
    """
    from .data import open_dataset
    from .sam.build import TEST_MODEL_TYPES
    from .weights import cached_sha256, resolve_sam_checkpoint

    model_type = sam_cfg.get("model_type", EMBED_DEFAULTS["model_type"])
    if model_type in TEST_MODEL_TYPES:
        sha = RANDOM_CHECKPOINT
    else:
        sha = cached_sha256(resolve_sam_checkpoint(model_type, sam_cfg.get("checkpoint"), weights_dir))
    if kind == "embed":
        settings = embed_settings()
    else:
        from .sam.everything import everything_settings

        settings = everything_settings(sam_cfg.get("everything", {}))
    return make_identity(kind, model_type, sha, settings, open_dataset(data_cfg, split).image_list_hash())


class _ImageLoader(torch.utils.data.Dataset):
    """Loads images by store index; a corrupt image yields its error message instead of raising,
    so the parent decides (fail naming the file, or skip) rather than a worker traceback."""

    def __init__(self, load: Callable[[str], np.ndarray], ids: Sequence[str], indices: Sequence[int]):
        self.load, self.ids, self.indices = load, list(ids), list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, str | None]:
        i = self.indices[k]
        try:
            return i, self.load(self.ids[i]), None
        except S2CError as e:
            return i, None, str(e)


def iter_images(
    dataset, ids: Sequence[str], indices: Sequence[int], batch_size: int, num_workers: int
) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """Batches of ``(store index, uint8 (H,W,3) image or None, error or None)``, decoded in workers."""
    loader = torch.utils.data.DataLoader(
        _ImageLoader(dataset.load_image, ids, indices),
        batch_size=batch_size,
        num_workers=num_workers if len(indices) > batch_size else 0,
        collate_fn=list,
    )
    yield from loader


def open_part(data_cfg: dict, split: str, part: int, parts: int):
    """(dataset, ids of this part) with a clear error for a bad data config."""
    from .data import open_dataset

    if isinstance(data_cfg, (str, os.PathLike)):
        data_cfg = json.loads(Path(data_cfg).read_text())
    ds = open_dataset(data_cfg, split)
    return ds, part_ids(ds.ids, part, parts)


def handle_corrupt(writer: PartWriter, i: int, err: str, skip: bool) -> None:
    if not skip:
        raise S2CError(f"{err}; replace or remove the image, or set data.skip_corrupt: true to drop unreadable "
                       "images from the split (every stage then skips them)")
    log.warning("skipping %s: %s", writer.ids[i], err)
    writer.write_skipped(i, err)


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
    from .sam.build import resolve_device
    from .sam.prompt import encode_images, sam_input_size

    cfg = merge_section(EMBED_DEFAULTS, cfg, "sam", ignore=_SAM_SECTION_OTHER)
    ds, ids = open_part(data_cfg, split, part, parts)
    if sam is None:
        sam, checkpoint_sha256 = load_sam(cfg, weights_dir, str(resolve_device(device)))
    identity = make_identity("embed", cfg["model_type"], checkpoint_sha256 or RANDOM_CHECKPOINT, embed_settings(), ds.image_list_hash())
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


def add_part_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-cfg", required=True, help="the config's data section as JSON (or a JSON file)")
    p.add_argument("--split", required=True, help="dataset split, e.g. train / train_aug / val")
    p.add_argument("--part", type=int, default=0, help="this job's part index K (0-based)")
    p.add_argument("--parts", type=int, default=1, help="number of parts N the split is cut into")
    p.add_argument("--out", type=Path, required=True, help="output part store (…/<kind>.partK.zarr)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"), help="where MobileSAM is provisioned")
    p.add_argument("--cfg", default="{}", help="the config's sam section as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def parse_json_arg(text: str, flag: str) -> dict:
    try:
        val = json.loads(text)
    except ValueError:
        path = Path(text)
        if not path.is_file():
            raise S2CError(f"{flag} is neither JSON nor a JSON file: {text[:80]!r}") from None
        try:
            val = json.loads(path.read_text())
        except ValueError as e:
            raise S2CError(f"{flag} file {path} is not valid JSON ({e})") from None
    if not isinstance(val, dict):
        raise S2CError(f"{flag} must be a JSON object, got {type(val).__name__}")
    return val


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s2c.sam_embed", description=__doc__.split("\n")[0])
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
