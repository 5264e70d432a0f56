"""Compact embedding codecs (int8 / int6, s2c.sam.cache): round-trip error bound, identity refusal,
fp16 stores unchanged, missing / corrupt chunks detected, transcoding, bench scripts run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from s2c.errors import S2CError
from s2c.sam.cache import (
    EMBED_CODECS,
    EmbeddingReader,
    PartWriter,
    codec_settings,
    dequantize_int8,
    join_parts,
    make_identity,
    quantize_int8,
    read_store_attrs,
    transcode_embeddings,
    verify,
)
from s2c.stages.sam_embed import embed_settings

REPO = Path(__file__).resolve().parents[1]


def ident(codec: str = "fp16") -> dict:
    return make_identity("embed", "vit_test", "x", {**embed_settings(), **codec_settings(codec)}, "h")


def write_store(path: Path, embs, codec: str = "fp16", part: int = 0, parts: int = 1, ids=None) -> Path:
    ids = ids or [f"im{k}" for k in range(len(embs))]
    w = PartWriter(path, ident(codec), ids, part, parts)
    for i, e in enumerate(embs):
        w.write_embedding(i, e, (10, 20), (512, 1024))
    return w.finalize()


def sam_like(n: int, seed: int = 0) -> list[torch.Tensor]:
    """Smooth-ish features with an outlier channel and an all-zero channel."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        e = torch.nn.functional.avg_pool2d(torch.randn(1, 256, 66, 66, generator=g), 3, 1)[0] * 0.3
        e[7] = 0
        e[9, 3, 4] = 25.0
        out.append(e)
    return out


@pytest.mark.parametrize("levels", [127, 31, 1])
def test_quantize_round_trip_within_half_a_step(levels):
    x = sam_like(1)[0].numpy()
    x[11] = np.where(np.indices((64, 64)).sum(0) % 2 == 0, 1.0, -1.0)  # checkerboard: residuals wrap mod 256
    stored, scale = quantize_int8(x, levels)
    assert stored.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (256,)
    y = dequantize_int8(stored, scale)
    err = np.abs(y - x).max(axis=(1, 2))
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()
    assert (y[7] == 0).all() and scale[7] == 0  # an all-zero channel stays exact
    assert np.array_equal(y[11], x[11])  # ±max values are exact (symmetric scale)
    with pytest.raises(ValueError, match="non-finite"):
        x[0, 0, 0] = np.nan
        quantize_int8(x, levels)


def test_codec_settings_and_unknown_codec():
    assert codec_settings("fp16") == {}  # fp16 identity = that of stores built before codecs existed
    assert codec_settings("int8") == {"codec": "int8", "levels": 127}
    assert codec_settings("int6") == {"codec": "int6", "levels": 31}
    assert set(EMBED_CODECS) == {"fp16", "int8", "int6"}
    with pytest.raises(S2CError, match=r"sam.embed_codec = 'int4'"):
        codec_settings("int4")


@pytest.mark.parametrize("codec", ["int8", "int6"])
def test_int_store_round_trip_bytes_and_verify(tmp_path, codec):
    embs = sam_like(3)
    p16 = write_store(tmp_path / "f.zarr", embs)
    pq = write_store(tmp_path / "q.zarr", embs, codec)
    r = EmbeddingReader(pq)
    assert r.codec == codec and EmbeddingReader(p16).codec == "fp16"
    assert r.identity["settings"]["codec"] == codec
    levels = EMBED_CODECS[codec]
    for k, e in enumerate(embs):
        got = r.embedding(f"im{k}")
        assert got.dtype == torch.float16 and tuple(got.shape) == (256, 64, 64)
        step = e.abs().amax(dim=(1, 2)) / levels
        err = (got.float() - e).abs().amax(dim=(1, 2))
        # half a quantisation step + float16 rounding of the decoded value
        assert (err <= step / 2 + e.abs().amax(dim=(1, 2)) * 2 ** -10 + 1e-6).all()
    assert verify(pq)["n_images"] == 3
    assert verify(pq)["bytes"] < 0.7 * verify(p16)["bytes"]
    assert r.meta("im1") == {"orig_size": (10, 20), "input_size": (512, 1024)}


def test_codec_mismatch_refused_with_the_fix(tmp_path):
    embs = sam_like(1)
    p16 = write_store(tmp_path / "f.zarr", embs)
    p8 = write_store(tmp_path / "q.zarr", embs, "int8")
    with pytest.raises(S2CError, match=r"settings\.codec: cache has 'int8', config expects '<absent>'.*rerun the sam_embed"):
        EmbeddingReader(p8, expect=ident("fp16"))
    with pytest.raises(S2CError, match=r"settings\.codec: cache has '<absent>', config expects 'int6'"):
        EmbeddingReader(p16, expect=ident("int6"))
    EmbeddingReader(p8, expect=ident("int8"))
    EmbeddingReader(p8, expect={"model_type": "vit_test"})  # the trainer's expect: any codec decodes
    # parts built with different codecs are not one cache
    a = write_store(tmp_path / "e.part0.zarr", embs, "fp16", 0, 2, ["a"])
    b = write_store(tmp_path / "e.part1.zarr", embs, "int8", 1, 2, ["b"])
    with pytest.raises(S2CError, match=r"settings\.codec"):
        join_parts("embed", [a, b], tmp_path / "m.json")
    # a partial store of another codec is rebuilt, not resumed
    w = PartWriter(tmp_path / "r.zarr", ident("int8"), ["a", "b"], 0, 1)
    w.write_embedding(0, embs[0], (10, 20), (512, 1024))
    assert not PartWriter(tmp_path / "r.zarr", ident("fp16"), ["a", "b"], 0, 1).resumed
    assert PartWriter(tmp_path / "r.zarr", ident("fp16"), ["a", "b"], 0, 1).resumed


def test_fp16_store_layout_unchanged(tmp_path):
    """An fp16 store is what it was before codecs: float16 array, no scale, no codec key."""
    p = write_store(tmp_path / "f.zarr", sam_like(1))
    g = zarr.open_group(p, mode="r")
    assert str(g["embedding"].dtype) == "float16" and "scale" not in g
    assert read_store_attrs(p)["settings"] == {"img_size": 1024, "dtype": "float16"}
    assert torch.equal(EmbeddingReader(p).embedding("im0"), sam_like(1)[0].half())


@pytest.mark.parametrize("array", ["embedding", "scale"])
def test_missing_or_corrupt_chunk_of_an_int8_store(tmp_path, array):
    p = write_store(tmp_path / "q.zarr", sam_like(2), "int8")
    chunk = next(f for f in sorted((p / array).rglob("*")) if f.is_file() and f.name != "zarr.json")
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-9] + b"corrupted")
    with pytest.raises(S2CError, match=r"q\.zarr, image im.: unreadable data"):
        verify(p)
    chunk.unlink()
    with pytest.raises(S2CError, match=rf"missing chunk {array}/"):
        verify(p)


def test_array_dtype_must_match_the_recorded_codec(tmp_path):
    p = write_store(tmp_path / "f.zarr", sam_like(1))
    g = zarr.open_group(p, mode="r+")
    attrs = dict(g.attrs)["s2c"]
    attrs["settings"] = {**attrs["settings"], **codec_settings("int8")}
    g.attrs["s2c"] = attrs
    with pytest.raises(S2CError, match=r"dtype float16 where codec 'int8' stores int8"):
        EmbeddingReader(p).embedding("im0")


def test_transcode_keeps_ids_sizes_and_skipped(tmp_path):
    embs = sam_like(3)
    w = PartWriter(tmp_path / "f.zarr", ident(), ["a", "b", "c"], 1, 2)
    w.write_embedding(0, embs[0], (10, 20), (512, 1024))
    w.write_skipped(1, "corrupt b.jpg")
    w.write_embedding(2, embs[2], (30, 40), (768, 1024))
    src = w.finalize()
    out = transcode_embeddings(src, tmp_path / "q.zarr", "int6")
    a, b = read_store_attrs(src), read_store_attrs(out)
    assert (b["part"], b["parts"], b["ids"], b["skipped"]) == (1, 2, ["a", "b", "c"], a["skipped"])
    assert b["settings"] == {**a["settings"], "codec": "int6", "levels": 31}
    r = EmbeddingReader(out)
    assert r.ids == ["a", "c"] and r.meta("c")["orig_size"] == (30, 40)
    ref = EmbeddingReader(src).embedding("c").float()
    step = ref.abs().amax(dim=(1, 2)) / 31
    assert ((r.embedding("c").float() - ref).abs().amax(dim=(1, 2)) <= step / 2 + ref.abs().amax(dim=(1, 2)) * 2 ** -10 + 1e-6).all()
    back = transcode_embeddings(out, tmp_path / "f2.zarr", "fp16")  # back to fp16: the original identity
    assert read_store_attrs(back)["settings"] == a["settings"]


@pytest.mark.parametrize("script", ["cache_codec.py", "gpu_figures.py"])
def test_bench_scripts_help(script):
    r = subprocess.run([sys.executable, str(REPO / "bench" / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout


def test_cache_codec_bench_tiny_run(synthetic_voc, tmp_path):
    out = tmp_path / "table.txt"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cache_codec.py"), "--workdir", str(tmp_path / "w"),
         "--data-cfg", json.dumps({"kind": "voc", "root": str(synthetic_voc)}), "--model-type", "vit_test",
         "--levels", "127,31", "--n-images", "3", "--workers", "0", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    figs = dict(kv.split("=") for kv in last.split())
    assert {"fp16_mb_per_image", "int8_iou_mean", "int6_iou_p5", "int8_loader_w0_ips"} <= set(figs)
    assert 0 < float(figs["int8_mb_per_image"]) < float(figs["fp16_mb_per_image"])
    assert out.read_text() == r.stdout


def test_stages_write_and_decode_the_configured_codec(synthetic_voc, tmp_path):
    """sam.embed_codec reaches sam_embed (store settings) and sam_everything (decodes that store,
    refuses a store of another codec, records a quantised codec in the SE identity)."""
    from s2c.defaults import everything_settings
    from s2c.sam.build import build_sam
    from s2c.sam.cache import SEMapReader
    from s2c.stages.sam_embed import run_sam_embed
    from s2c.stages.sam_everything import run_sam_everything

    torch.manual_seed(0)
    sam = build_sam("vit_test", None, "cpu")
    dc = {"kind": "voc", "root": str(synthetic_voc)}
    base = {"model_type": "vit_test", "num_workers": 0}
    kw = dict(sam=sam, checkpoint_sha256="abc", progress=False)
    e16 = run_sam_embed(dc, "val", 0, 1, tmp_path / "e16.zarr", tmp_path, {**base, "batch_size": 2}, "cpu", **kw)
    e8 = run_sam_embed(dc, "val", 0, 1, tmp_path / "e8.zarr", tmp_path, {**base, "batch_size": 2, "embed_codec": "int8"},
                       "cpu", **kw)
    assert EmbeddingReader(e16).codec == "fp16" and EmbeddingReader(e8).codec == "int8"
    assert read_store_attrs(e16)["settings"] == embed_settings()  # fp16 identity unchanged
    r16, r8 = EmbeddingReader(e16), EmbeddingReader(e8)
    for id_ in r16.ids:
        a, b = r16.embedding(id_).float(), r8.embedding(id_).float()
        mx = a.abs().amax(dim=(1, 2))  # half a step + the float16 rounding of both sides
        assert ((a - b).abs().amax(dim=(1, 2)) <= mx / 127 / 2 + 2 * mx * 2 ** -10 + 1e-6).all()
    ev = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "reuse_embedding": True}
    se_cfg = {**base, "everything": ev}
    with pytest.raises(S2CError, match=r"settings\.codec: cache has 'int8'"):
        run_sam_everything(dc, "val", 0, 1, tmp_path / "se.zarr", tmp_path, se_cfg, "cpu", embed_store=e8, **kw)
    out = run_sam_everything(dc, "val", 0, 1, tmp_path / "se8.zarr", tmp_path, {**se_cfg, "embed_codec": "int8"}, "cpu",
                             embed_store=e8, **kw)
    assert SEMapReader(out).identity["settings"] == {**everything_settings(ev), "embed_codec": "int8"}
    out16 = run_sam_everything(dc, "val", 0, 1, tmp_path / "se16.zarr", tmp_path, se_cfg, "cpu", embed_store=e16, **kw)
    assert SEMapReader(out16).identity["settings"] == everything_settings(ev)


def test_gpu_figures_table_from_stubbed_measurements(tmp_path, monkeypatch, capsys):
    """The table, goals, projection and TSV of bench/gpu_figures.py (measurements stubbed: the real
    CPU run takes many minutes; its command is in the README)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_figures", REPO / "bench" / "gpu_figures.py")
    gf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gf)
    steps = {"vit_t": {"baseline": (0.2, None), "cached": (0.25, None), "online": (0.5, None)},
             "vit_b": {"baseline": (0.2, None), "cached": (0.28, None), "online": (3.0, None)}}
    monkeypatch.setattr(gf, "run_train_step", lambda a, sam: steps[sam])
    monkeypatch.setattr(gf, "build", lambda mt, a, dev: object())
    monkeypatch.setattr(gf, "embed_ips", lambda sam, ims, dev, b: (4.0, None, [None] * len(ims)))
    monkeypatch.setattr(gf, "se_ips", lambda sam, ims, embs, dev, pps: (2.0, None, 50.0))
    assert gf.main(["--device", "cpu", "--quick", "--batch-size", "8", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert last["online_over_cached"] == "10.71" and last["cached_over_baseline"] == "1.40"
    # 6 epochs × 10582 // 8 = 7932 steps × 0.28 s
    assert last["voc_cached_h"] == f"{7932 * 0.28 / 3600:.2f}"
    rows = {r.split("\t")[0]: r.split("\t") for r in (tmp_path / "gpu_cpu_quick.tsv").read_text().splitlines()[2:]}
    assert rows["online / cached"][1:3] == ["2.00", "10.71"]
    assert rows["VOC schedule h: cache build (embed + SE)"][2] == f"{10582 / 4 / 3600 + 10582 / 2 / 3600:.2f}"
