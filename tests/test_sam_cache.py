"""SAM cache stores: round trips, parallel parts + join, identity refusal, resume after kill -9,
corrupt images, verify, DataLoader workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from s2c.errors import S2CError
from s2c.sam.cache import (
    EmbeddingReader,
    PartWriter,
    SEMapReader,
    join_parts,
    make_identity,
    part_ids,
    partial_path,
    verify,
)
from s2c.stages.sam_embed import RANDOM_CHECKPOINT, embed_settings, run_sam_embed
from s2c.stages.sam_everything import run_sam_everything

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
EMBED_CFG = {"model_type": "vit_test", "batch_size": 2, "num_workers": 0}
# loose thresholds: the tiny random SAM must still produce segments
SE_CFG = {"model_type": "vit_test", "everything": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.7,
                         "stability_score_offset": 0.1, "box_nms_thresh": 0.95,
                                                  "reuse_embedding": False}, "num_workers": 0}

def data_cfg(root: Path) -> dict:
    return {"kind": "voc", "root": str(root)}

def vit_test_sam():
    from s2c.sam.build import build_sam

    torch.manual_seed(0)  # the stage seeds the same way: identical random weights
    return build_sam("vit_test", None, "cpu")

def cli(module: str, *args: str) -> list[str]:
    return [PY, "-m", module, *args]

def embed_args(root: Path, split: str, part: int, parts: int, out: Path, cfg: dict = EMBED_CFG) -> list[str]:
    return cli("s2c.stages.sam_embed", "--data-cfg", json.dumps(data_cfg(root)), "--split", split, "--part", str(part),
               "--parts", str(parts), "--out", str(out), "--cfg", json.dumps(cfg), "--device", "cpu")

def test_part_ids_cover_each_id_once():
    ids = [f"i{k}" for k in range(11)]
    parts = [part_ids(ids, k, 3) for k in range(3)]
    assert sum(parts, []) == ids and [len(p) for p in parts] == [3, 4, 4]
    with pytest.raises(S2CError, match="--part"):
        part_ids(ids, 3, 3)

def test_two_parts_in_parallel_then_join_round_trip(synthetic_voc, tmp_path):
    """Two part jobs as concurrent processes (one writer per store), joined; values = direct encoding."""
    from s2c.data import open_dataset
    from s2c.sam.prompt import encode_image

    outs = [tmp_path / f"embed.part{k}.zarr" for k in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(embed_args(synthetic_voc, "val", k, 2, outs[k]), env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    for p in procs:
        log = p.communicate(timeout=300)[0]
        assert p.returncode == 0, log
    assert not any(partial_path(o).exists() for o in outs)
    man = tmp_path / "embed.json"
    # part order on the command line does not matter
    subprocess.run(cli("s2c.stages.sam_cache", "join", "--kind", "embed", "--parts", str(outs[1]), str(outs[0]),
                       "--out", str(man)), check=True, cwd=REPO)
    res = subprocess.run(cli("s2c.stages.sam_cache", "verify", str(man), "--quiet"), cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr

    ds = open_dataset(data_cfg(synthetic_voc), "val")
    reader = EmbeddingReader(man, expect=make_identity("embed", "vit_test", RANDOM_CHECKPOINT, embed_settings(), ds.image_list_hash()))
    assert reader.ids == ds.ids
    sam = vit_test_sam()
    for id_ in ds.ids:
        im = ds.load_image(id_)
        ref, input_size = encode_image(sam, im)
        got = reader.embedding(id_)
        assert got.dtype == torch.float16 and got.shape == (256, 64, 64)
        torch.testing.assert_close(got.float(), ref.half().float(), atol=2e-3, rtol=2e-3)
        assert reader.meta(id_) == {"orig_size": im.shape[:2], "input_size": tuple(input_size)}

def _fast_tiny_sam():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_everything import tiny_sam

    return tiny_sam()

def test_se_round_trip_and_refusal(synthetic_voc, tmp_path):
    from s2c.data import open_dataset
    from s2c.defaults import everything_settings
    from s2c.sam.everything import se_map

    sam = _fast_tiny_sam()
    outs = [run_sam_everything(data_cfg(synthetic_voc), "val", k, 2, tmp_path / f"se.part{k}.zarr", tmp_path,
                               SE_CFG, "cpu", sam=sam, checkpoint_sha256="abc", progress=False) for k in range(2)]
    man = tmp_path / "se.json"
    join_parts("se", outs, man)
    ds = open_dataset(data_cfg(synthetic_voc), "val")
    expect = make_identity("se", "vit_test", "abc", everything_settings(SE_CFG["everything"]), ds.image_list_hash())
    reader = SEMapReader(man, expect=expect)
    n_seg = 0
    for id_ in ds.ids:
        ref = se_map(sam, ds.load_image(id_), SE_CFG["everything"])
        got = reader.se_map(id_)
        assert got.dtype == np.int32 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        assert reader.meta(id_)["n_segments"] == int(ref.max())
        n_seg += int(ref.max())
    assert n_seg > 0, "no segments at all: the round trip compared only empty maps"
    assert verify(man)["n_images"] == len(ds.ids)

    # a cache built with other settings / checkpoint / images / kind is refused, naming key and store
    other = {**expect, "settings": everything_settings({**SE_CFG["everything"], "points_per_side": 8})}
    with pytest.raises(S2CError, match=r"se\.json.*settings\.points_per_side.*rerun the sam_everything"):
        SEMapReader(man, expect=other)
    with pytest.raises(S2CError, match="checkpoint_sha256"):
        SEMapReader(man, expect={**expect, "checkpoint_sha256": "def"})
    with pytest.raises(S2CError, match="image_list_hash"):
        SEMapReader(man, expect={**expect, "image_list_hash": "0" * 64})
    with pytest.raises(S2CError, match="not 'embed'"):
        EmbeddingReader(man)
    # stale format version
    with pytest.raises(S2CError, match="version"):
        SEMapReader(man, expect={"version": 0})
    # join refuses parts built differently
    odd = run_sam_everything(data_cfg(synthetic_voc), "val", 1, 2, tmp_path / "odd.zarr", tmp_path,
                             SE_CFG, "cpu", sam=sam, checkpoint_sha256="zzz", progress=False)
    with pytest.raises(S2CError, match="checkpoint_sha256"):
        join_parts("se", [outs[0], odd], tmp_path / "bad.json")

def test_se_decodes_from_the_embedding_store(synthetic_voc, tmp_path):
    """reuse_embedding: SE maps come from the cached fp16 embedding, not a second encoder pass; the
    store must be the same model's, and the setting is part of the SE identity."""
    from s2c.data import open_dataset
    from s2c.defaults import everything_settings
    from s2c.sam.everything import se_map

    sam = vit_test_sam()  # 256-channel embeddings, like the real models
    # every mask accepted (random weights): the comparison below covers real segments
    cfg = {**SE_CFG, "everything": {**SE_CFG["everything"], "reuse_embedding": True, "stability_score_thresh": 0.0}}
    emb = run_sam_embed(data_cfg(synthetic_voc), "val", 0, 1, tmp_path / "embed.zarr", tmp_path,
                        {**EMBED_CFG, "model_type": "vit_test"}, "cpu", sam=sam, checkpoint_sha256="abc", progress=False)
    with pytest.raises(S2CError, match="--embed-store"):
        run_sam_everything(data_cfg(synthetic_voc), "val", 0, 1, tmp_path / "se.zarr", tmp_path, cfg, "cpu",
                           sam=sam, checkpoint_sha256="abc", progress=False)
    with pytest.raises(S2CError, match="checkpoint_sha256"):  # another checkpoint's embeddings
        run_sam_everything(data_cfg(synthetic_voc), "val", 0, 1, tmp_path / "se.zarr", tmp_path, cfg, "cpu",
                           sam=sam, checkpoint_sha256="other", progress=False, embed_store=emb)
    out = run_sam_everything(data_cfg(synthetic_voc), "val", 0, 1, tmp_path / "se.zarr", tmp_path, cfg, "cpu",
                             sam=sam, checkpoint_sha256="abc", progress=False, embed_store=emb)
    ds = open_dataset(data_cfg(synthetic_voc), "val")
    embeddings, se = EmbeddingReader(emb), SEMapReader(out)
    assert se.identity["settings"] == everything_settings(cfg["everything"]) != everything_settings(
        {**cfg["everything"], "reuse_embedding": False})
    n_seg = 0
    for id_ in ds.ids:
        ref = se_map(sam, ds.load_image(id_), cfg["everything"], embedding=embeddings.embedding(id_))
        np.testing.assert_array_equal(se.se_map(id_), ref)
        n_seg += int(ref.max())
    assert n_seg > 0


def test_large_segment_counts_stored_without_wrap(tmp_path):
    ident = make_identity("se", "vit_test", "x", {}, "h")
    w = PartWriter(tmp_path / "se.zarr", ident, ["a", "b"], 0, 1)
    a = (np.arange(40 * 30).reshape(40, 30) % 300).astype(np.uint32)  # ids 0..299
    b = np.arange(1, 256 * 300 + 1, dtype=np.uint32).reshape(256, 300)  # 76800 segments > uint16
    w.write_se(0, a)
    w.write_se(1, b)
    out = w.finalize()
    r = SEMapReader(out)
    np.testing.assert_array_equal(r.se_map("a"), a.astype(np.int32))
    np.testing.assert_array_equal(r.se_map("b"), b.astype(np.int32))
    assert r.meta("b")["n_segments"] == 76800
    g = zarr.open_group(out, mode="r")
    assert g["se/0"].dtype == np.uint16 and g["se/1"].dtype == np.uint32

def _done(store: Path) -> int:
    try:
        return int((np.asarray(zarr.open_group(store, mode="r")["meta"][:, 0]) == 1).sum())
    except Exception:
        return 0

def test_resume_after_kill(tmp_path, caplog):
    """kill -9 mid-run: no complete-looking output; a rerun skips finished images; verify passes."""
    from s2c.data import open_dataset
    from s2c.data.synthetic import make_synthetic_voc
    from s2c.sam.prompt import encode_image

    root = make_synthetic_voc(tmp_path / "voc", n_train=16, n_val=2, size=64, seed=1)
    out = tmp_path / "embed.part0.zarr"
    cfg = {**EMBED_CFG, "batch_size": 1}
    p = subprocess.Popen(embed_args(root, "train", 0, 1, out, cfg), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while _done(partial_path(out)) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    n_before = _done(partial_path(out))
    assert 3 <= n_before < 16, f"kill did not land mid-run ({n_before} of 16 done)"
    assert not out.exists(), "an interrupted job left an output that looks complete"
    with pytest.raises(S2CError, match="interrupted job"):
        EmbeddingReader(out)

    sam = vit_test_sam()
    with caplog.at_level("INFO"):
        run_sam_embed(data_cfg(root), "train", 0, 1, out, tmp_path, cfg, "cpu", sam=sam,
                      checkpoint_sha256=RANDOM_CHECKPOINT, progress=False)
    assert f"{16 - n_before} of 16 images left" in caplog.text
    assert out.exists() and not partial_path(out).exists()
    assert verify(out)["n_images"] == 16
    ds = open_dataset(data_cfg(root), "train")
    r = EmbeddingReader(out)
    for id_ in ds.ids[:: 5]:  # images from before and after the kill are intact
        ref, _ = encode_image(sam, ds.load_image(id_))
        torch.testing.assert_close(r.embedding(id_).float(), ref.half().float(), atol=2e-3, rtol=2e-3)

def test_corrupt_image_fails_or_is_skipped(synthetic_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(synthetic_voc, root)
    bad_id = (root / "ImageSets/Segmentation/val.txt").read_text().split()[1]
    (root / "JPEGImages" / f"{bad_id}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    sam = vit_test_sam()
    kw = dict(sam=sam, checkpoint_sha256=RANDOM_CHECKPOINT, progress=False)
    with pytest.raises(S2CError, match=f"{bad_id}.jpg.*skip_corrupt"):
        run_sam_embed(data_cfg(root), "val", 0, 1, tmp_path / "e.zarr", tmp_path, EMBED_CFG, "cpu", **kw)
    assert not (tmp_path / "e.zarr").exists()
    out = run_sam_embed(data_cfg(root), "val", 0, 1, tmp_path / "e.zarr", tmp_path,
                        {**EMBED_CFG, "skip_corrupt": True}, "cpu", **kw)
    join_parts("embed", [out], tmp_path / "e.json")
    r = EmbeddingReader(tmp_path / "e.json")
    assert bad_id not in r.ids and len(r.ids) == 3 and bad_id in r.skipped
    with pytest.raises(S2CError, match="skipped"):
        r.embedding(bad_id)
    assert json.loads((tmp_path / "e.json").read_text())["skipped"][0]["id"] == bad_id
    assert verify(tmp_path / "e.json")["n_skipped"] == 1

def test_verify_detects_corrupt_chunk_and_missing_part(tmp_path):
    ident = make_identity("embed", "vit_test", "x", embed_settings(), "h")
    w = PartWriter(tmp_path / "e.part0.zarr", ident, ["a", "b"], 0, 2)
    for i in range(2):
        w.write_embedding(i, torch.randn(256, 64, 64), (10, 20), (512, 1024))
    p0 = w.finalize()
    assert verify(p0)["n_images"] == 2
    with pytest.raises(S2CError, match=r"need each of 0\.\.1"):
        join_parts("embed", [p0], tmp_path / "m.json")
    chunk = next(f for f in (p0 / "embedding").rglob("*") if f.is_file() and f.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-9] + b"corrupted")
    with pytest.raises(S2CError, match=r"e\.part0\.zarr, image .: unreadable data"):
        verify(p0)

def test_reader_with_dataloader_workers(tmp_path):
    ident = make_identity("embed", "vit_test", "x", embed_settings(), "h")
    ids = [f"im{k}" for k in range(6)]
    w = PartWriter(tmp_path / "e.zarr", ident, ids, 0, 1)
    embs = [torch.full((256, 64, 64), float(k)) for k in range(6)]
    for i, e in enumerate(embs):
        w.write_embedding(i, e, (8, 8), (1024, 1024))
    reader = EmbeddingReader(w.finalize())
    reader.embedding(ids[0])  # opened in the parent first: workers must reopen, not share

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, k):
            return reader.embedding(ids[k]).float().mean()

    got = torch.cat(list(torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2)))
    assert got.tolist() == [float(k) for k in range(6)]
