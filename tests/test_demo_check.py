"""The CI's demo gate (.ci/check_demo.py) and the CPU-path comparison (bench/demo_cpu_paths.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml
import zarr

from s2c.io import save_label_png

ROOT = Path(__file__).resolve().parents[1]
def _block(kind: str, seg: float) -> str:
    return f"""```text cpu={kind}
metric                     mIoU %  floor %  extra
----------------------------------------------------------------
CAM (train)                 60.97    21.07  bg threshold 0.50
pseudo-labels (train)       89.04    21.07
segmentation (val)          {seg:.2f}
```
"""


README = f"text\n\n{_block('avx512', 93.16)}\nthe other kind:\n\n{_block('avx2', 96.16)}"


def _gate():
    spec = importlib.util.spec_from_file_location("check_demo", ROOT / ".ci" / "check_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(tmp_path, cam: float, pseudo: float, seg: float | None, readme: str = README):
    (tmp_path / "README.md").write_text(readme)
    rows = [f"CAM (train)                 {cam:.2f}    21.07  bg threshold 0.50",
            f"pseudo-labels (train)       {pseudo:.2f}    21.07"]
    if seg is not None:
        rows.append(f"segmentation (val)          {seg:.2f}")
    (tmp_path / "demo.log").write_text("snakemake noise\n" + "\n".join(rows) + "\n")
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "check_demo.py"), str(tmp_path / "demo.log"),
                           str(tmp_path / "README.md")], capture_output=True, text=True, check=False)


def test_demo_gate_reads_the_block_of_this_cpu_kind():
    gate = _gate()
    tables = gate.readme_tables(README)
    assert tables["avx512"]["segmentation (val)"] == 93.16 and tables["avx2"]["segmentation (val)"] == 96.16
    assert gate.cpu_kind({"sse4_1", "avx2", "avx512f"}) == "avx512"
    assert gate.cpu_kind({"sse4_1", "avx2"}) == "avx2"
    assert gate.cpu_kind(set()) == "other"
    untagged = gate.readme_tables(README.replace("```text cpu=avx512", "```"))
    assert set(untagged) == {None, "avx2"}


def test_demo_gate_tolerance_and_machine(tmp_path):
    kind = _gate().cpu_kind(_gate().cpu_flags()[1])
    seg = 96.16 if kind == "avx2" else 93.16
    readme = README if kind in ("avx2", "avx512") else README.replace("```text cpu=avx512", "```")
    ok = _check(tmp_path, 61.90, 88.10, seg, readme)
    assert ok.returncode == 0, ok.stdout
    first = ok.stdout.splitlines()[0]
    assert first.startswith("machine: ") and f"cpu={kind}" in first and "cores" in first
    far = _check(tmp_path, 62.10, 89.04, seg, readme)  # 1.13 points off
    assert far.returncode == 1 and "CAM (train)" in far.stdout and "DIFFERS" in far.stdout
    other_kind = _check(tmp_path, 60.97, 89.04, 96.16 if seg == 93.16 else 93.16, readme)  # the other block's seg
    assert other_kind.returncode == 1 and "segmentation (val)" in other_kind.stdout
    missing = _check(tmp_path, 60.97, 89.04, None, readme)
    assert missing.returncode == 1 and "missing" in missing.stdout


def test_demo_gate_fails_without_a_block_for_this_cpu(tmp_path):
    kind = _gate().cpu_kind(_gate().cpu_flags()[1])
    other = "avx2" if kind == "avx512" else "avx512"
    only_other = README.split("the other kind:")[0].replace("cpu=avx512", f"cpu={other}")
    r = _check(tmp_path, 60.97, 89.04, 93.16, only_other)
    assert r.returncode == 1 and f"no demo metric table for cpu={kind}" in r.stdout


def _fake_run(root: Path, cam_shift: float, flip_pixels: int, mious: tuple[float, float, float]) -> None:
    cache = root / "cache/demo_voc/vit_t/train_aug"
    emb = zarr.open_group(str(cache / "embed.part0.zarr"), mode="w")
    e = np.zeros((2, 4, 4), np.float16)
    e.flat[:flip_pixels] = 1  # the embedding differs where the pseudo-label does
    emb.create_array("embeddings", data=e)
    se = zarr.open_group(str(cache / "se-0000.part0.zarr"), mode="w")
    for i in range(3):
        se.create_array(f"se/{i}", data=np.full((4, 4), i, np.uint8))
    (root / "results/demo/cams").mkdir(parents=True)
    with h5py.File(root / "results/demo/cams/train_aug.h5", "w") as f:
        for i in range(2):
            f[f"images/img{i}/cams"] = np.full((1, 4, 4), 0.5 + (cam_shift if i == 1 else 0), np.float16)
    pseudo = root / "results/demo/pseudo/train_aug"
    pseudo.mkdir(parents=True)
    for i in range(4):
        lab = np.zeros((10, 10), np.uint8)
        if i == 0:
            lab.flat[:flip_pixels] = 1
        save_label_png(lab, pseudo / f"img{i}.png")
    metrics = root / "results/demo/metrics"
    metrics.mkdir(parents=True)
    for stem, v in zip(("cam_train", "pseudo_train", "seg_val"), mious):
        (metrics / f"{stem}.json").write_text(json.dumps({"miou": v}))


def test_cpu_paths_table(tmp_path):
    _fake_run(tmp_path / "a", 0.0, 0, (60.0, 90.0, 93.0))
    _fake_run(tmp_path / "b", 0.25, 10, (60.5, 85.0, 93.0))
    r = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "bench" / "demo_cpu_paths.py"),
                        str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line[:24].strip(): line[24:].split() for line in r.stdout.splitlines() if line[:1].isalpha()}
    assert rows["SAM embeddings (fp16)"] == ["1/1", "arrays", "31.250%", "of", "elements"]  # 10 of 32
    assert rows["SE maps"][0] == "0/3"
    assert rows["CAM store"] == ["1/2", "arrays", "50.000%", "of", "elements"]
    assert rows["pseudo-labels"] == ["1/4", "images", "2.500%", "of", "pixels"]  # 10 of 400
    assert rows["CAM (train)"] == ["60.00", "60.50", "+0.50"]
    assert rows["pseudo-labels (train)"] == ["90.00", "85.00", "-5.00"]
    assert rows["segmentation (val)"] == ["93.00", "93.00", "+0.00"]


def test_readme_blocks_agree_where_portable_kernels_promise_it():
    """The README's demo printouts: one per CPU kind CI has run on, the demo config asks for portable
    kernels, and the figures those make repeat (CAM, pseudo-labels) are the same in every block."""
    tables = _gate().readme_tables((ROOT / "README.md").read_text())
    assert {"avx512", "avx2"} <= set(tables)
    assert yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["cpu_kernels"] == "portable"
    for metric in ("CAM (train)", "pseudo-labels (train)"):
        assert len({t[metric] for t in tables.values()}) == 1, metric
