"""Dataset layout check: verify a VOC or COCO folder (and user-supplied weights) before any job.

``s2c prepare --data-cfg JSON --train train_aug --eval train val [--quick] [--out r.json]``

Every problem is reported at once, each as *what is missing*, *where it was looked for* and *how
to get it* (the official source), so one run tells a user everything to fix. ``check_layout`` is
the library call (the workflow runs it with ``quick=True`` when it builds the DAG, and the
``prepare_voc`` / ``prepare_coco`` rule runs the full check as a job).

VOC (``data.kind: voc``), under ``data.root`` (the ``VOCdevkit/VOC2012`` folder):
  - ``JPEGImages/<id>.jpg`` for every id of every split used;
  - ``ImageSets/Segmentation/<split>.txt`` for every split used (``train_aug.txt`` is the SBD list);
  - image labels for every training id: ``Annotations/<id>.xml`` or a label map;
  - label maps (``SegmentationClassAug/`` or ``SegmentationClass/``, or ``data.gt_dir``) for every
    id of the evaluation splits.
COCO (``data.kind: coco``), under ``data.root``: per split the image folder and the instances json
(``<split>/`` + ``annotations/instances_<split>.json``, the official ``<split>2017`` names, or
``data.coco_splits``); the json's entries (:func:`s2c.data.coco.check_coco_json`) and every image
file they name. The quick check (the DAG build's) takes the image list from the dataset metadata
cache (parsed once per edit of the json); the full one parses the json again.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.base import cache_dir_for
from ..data.coco import _split_paths, coco_image_files
from ..data.voc import read_id_list
from ..errors import S2CError, cli_main
from ..io import atomic_path
from ..weights import SAM_OFFICIAL

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html"
TRAIN_AUG_HOW = (
    "train_aug.txt (10,582 ids) is the standard SBD-augmented list: take voc12/train_aug.txt from "
    "the IRN or DeepLab repositories (github.com/jiwoon-ahn/irn) or build it from SBD "
    f"({SBD_URL}) train+val minus VOC val"
)
SEG_AUG_HOW = (
    "SegmentationClassAug/ holds the SBD masks converted to VOC PNGs (the common "
    "SegmentationClassAug.zip used by DeepLab/IRN, or convert SBD's .mat files); without it "
    "SegmentationClass/ from the VOC tarball is used, which covers train and val only"
)
COCO_URL = "https://cocodataset.org/#download"
COCO_HOW = (
    f"download train2017.zip / val2017.zip and annotations_trainval2017.zip from {COCO_URL}; "
    "unzip them under data.root (the official names are found automatically) or map each split "
    "with data.coco_splits: {<split>: {images: <dir>, annotations: <json>}}"
)
RESNET38_HOW = (
    "ResNet-38d ImageNet weights: the MXNet file ilsvrc-cls_rna-a1_cls1000_ep-0001.params "
    "(linked from the PSA / IRN repositories, github.com/jiwoon-ahn/psa) or a converted .pth"
)
MAX_LISTED = 5  # missing files named per problem (the count is always given)


@dataclass
class Problem:
    what: str
    where: str
    how: str

    def __str__(self) -> str:
        return f"missing {self.what}\n    looked in: {self.where}\n    get it: {self.how}"


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _usable_file(path: Path) -> bool:
    """A regular file with at least one byte (one stat call; a 0-byte image is a failed copy)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _missing_is_a_problem(data_cfg: dict, missing: list, listed: list) -> bool:
    """Missing images stop the workflow unless data.skip_corrupt drops them from the split (as the
    readers do), and then only when nothing is left."""
    if data_cfg.get("skip_corrupt"):
        return bool(listed) and len(missing) == len(listed)
    return bool(missing)


def _metadata_cache(root: Path, data_cfg: dict) -> Path | None:
    """The dataset metadata cache (s2c.data: data.cache_dir or the user's cache folder)."""
    return cache_dir_for(root, {"cache_dir": data_cfg.get("cache_dir")})


def _voc_gt_dir(root: Path, data_cfg: dict) -> Path:
    if data_cfg.get("gt_dir"):
        return root / data_cfg["gt_dir"]
    aug = root / "SegmentationClassAug"
    return aug if aug.is_dir() else root / "SegmentationClass"


def check_voc(data_cfg: dict, train: list[str], evals: list[str]) -> tuple[list[Problem], dict]:
    root = Path(data_cfg["root"])
    problems: list[Problem] = []
    summary: dict = {}
    if not root.is_dir():
        return [Problem(f"VOC root folder {root}", "data.root", f"download {VOC_URL}, extract it and set "
                        "data.root to its VOCdevkit/VOC2012 folder")], summary
    jpeg = root / "JPEGImages"
    if not jpeg.is_dir():
        problems.append(Problem("image folder JPEGImages/", str(jpeg), f"it comes with {VOC_URL}"))
    gt_dir = _voc_gt_dir(root, data_cfg)
    if not gt_dir.is_dir():
        how = SEG_AUG_HOW if data_cfg.get("gt_dir") in (None, "SegmentationClassAug") else f"set data.gt_dir to an existing label folder; {SEG_AUG_HOW}"
        problems.append(Problem(f"label-map folder {gt_dir.name}/", str(gt_dir), how))
    for split in dict.fromkeys([*train, *evals]):
        lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            how = TRAIN_AUG_HOW if split == "train_aug" else f"{split}.txt comes with {VOC_URL}"
            problems.append(Problem(f"image list for split {split!r}", str(lst), how))
            continue
        try:
            ids = read_id_list(lst)
        except S2CError as e:
            problems.append(Problem(f"a valid image list for split {split!r}", str(lst), str(e)))
            continue
        summary[split] = {"images": len(ids)}
        if jpeg.is_dir():
            missing = [i for i in ids if not _usable_file(jpeg / f"{i}.jpg")]
            if _missing_is_a_problem(data_cfg, missing, ids):
                problems.append(Problem(
                    f"{len(missing)} of {len(ids)} images of split {split!r}: {_few(missing)}",
                    str(jpeg),
                    f"they come with {VOC_URL} (SBD-only ids too: all train_aug images are VOC2012 images; "
                    "a 0-byte file counts as missing); or set data.skip_corrupt: true to drop them",
                ))
        has_mask = [(gt_dir / f"{i}.png").is_file() for i in ids] if gt_dir.is_dir() else [False] * len(ids)
        summary[split]["label_maps"] = sum(has_mask)
        if split in train:
            ann = root / "Annotations"
            unlabeled = [i for i, m in zip(ids, has_mask) if not m and not (ann / f"{i}.xml").is_file()]
            if unlabeled:
                problems.append(Problem(
                    f"image labels (Annotations/<id>.xml or a label map) for {len(unlabeled)} of "
                    f"{len(ids)} training images of split {split!r}: {_few(unlabeled)}",
                    f"{ann} and {gt_dir}",
                    f"Annotations/ comes with {VOC_URL}; {SEG_AUG_HOW}",
                ))
        if split in evals and gt_dir.is_dir():
            no_gt = [i for i, m in zip(ids, has_mask) if not m]
            if no_gt:
                problems.append(Problem(
                    f"label maps for {len(no_gt)} of {len(ids)} images of evaluation split {split!r}: {_few(no_gt)}",
                    str(gt_dir),
                    f"SegmentationClass/ of {VOC_URL} has train and val; {SEG_AUG_HOW}",
                ))
    return problems, summary


def check_coco(data_cfg: dict, splits: list[str], quick: bool) -> tuple[list[Problem], dict]:
    root = Path(data_cfg["root"])
    if not root.is_dir():
        return [Problem(f"COCO root folder {root}", "data.root", COCO_HOW)], {}
    problems: list[Problem] = []
    summary: dict = {}
    for split in dict.fromkeys(splits):
        try:
            img_dir, ann = _split_paths(root, split, data_cfg)
        except S2CError as e:
            problems.append(Problem(f"a valid data.coco_splits.{split} entry", "config data.coco_splits", str(e)))
            continue
        if not img_dir.is_dir():
            problems.append(Problem(f"image folder of split {split!r}", str(img_dir), COCO_HOW))
        if not ann.is_file():
            problems.append(Problem(f"instances json of split {split!r}", str(ann), COCO_HOW))
            continue
        if not img_dir.is_dir():
            continue
        try:
            files = coco_image_files(img_dir, ann, _metadata_cache(root, data_cfg) if quick else None)
        except S2CError as e:
            problems.append(Problem(f"a valid instances json for split {split!r}", str(ann),
                                    f"it does not parse as COCO ({e}): {COCO_HOW}"))
            continue
        summary[split] = {"images": len(files)}
        if not files:
            problems.append(Problem(f"images in split {split!r} (its json lists none)", str(ann), COCO_HOW))
        missing = [f.name for f in files if not _usable_file(f)]
        if _missing_is_a_problem(data_cfg, missing, files):
            problems.append(Problem(f"{len(missing)} of {len(files)} images of split {split!r}: {_few(missing)}",
                                    str(img_dir), f"{COCO_HOW} (a 0-byte file counts as missing); or set "
                                    "data.skip_corrupt: true to drop them"))
    return problems, summary


def check_weights(sam_model_type: str | None, sam_checkpoint: str | None, pretrained: list[str]) -> list[Problem]:
    """User-supplied weight files (provisioned ones, MobileSAM and EfficientNet-Lite0, are fetched by
    the workflow itself)."""
    problems = []
    if sam_model_type in SAM_OFFICIAL:
        name, url, _ = SAM_OFFICIAL[sam_model_type]
        if not sam_checkpoint:
            problems.append(Problem(f"SAM {sam_model_type} checkpoint {name}", "config sam.checkpoint (empty)",
                                    f"download {url} and set sam.checkpoint to its path"))
        elif not Path(sam_checkpoint).is_file():
            problems.append(Problem(f"SAM {sam_model_type} checkpoint", sam_checkpoint,
                                    f"download {url} and set sam.checkpoint to its path (or put {name} "
                                    "in the weights folder)"))
    for p in pretrained:
        if not Path(p).is_file():
            problems.append(Problem("backbone weights file", p, RESNET38_HOW if "rna" in p or p.endswith(".params")
                                    else "set cam.pretrained / seg.pretrained to an existing file, or true for ImageNet weights"))
    return problems


def layout_inputs(data_cfg: dict, splits: list[str]) -> list[str]:
    """The files that define the splits (VOC lists, COCO instances json): a rule's inputs, so an
    edited list reruns the check."""
    root = Path(data_cfg["root"])
    if data_cfg.get("kind", "voc") == "voc":
        return [str(root / "ImageSets" / "Segmentation" / f"{s}.txt") for s in dict.fromkeys(splits)]
    return [str(_split_paths(root, s, data_cfg)[1]) for s in dict.fromkeys(splits)]


def check_layout(data_cfg: dict, train: list[str], evals: list[str], *, quick: bool = False,
                 sam_model_type: str | None = None, sam_checkpoint: str | None = None,
                 pretrained: list[str] = ()) -> dict:
    """Check everything at once; returns ``{kind, root, ok, splits, problems}`` (problems as dicts)."""
    kind = data_cfg.get("kind", "voc")
    if kind == "voc":
        problems, summary = check_voc(data_cfg, train, evals)
    elif kind == "coco":
        problems, summary = check_coco(data_cfg, [*train, *evals], quick)
    else:
        raise S2CError(f"data.kind {kind!r} is not a dataset layout; use voc or coco")
    problems += check_weights(sam_model_type, sam_checkpoint, list(pretrained))
    return {"kind": kind, "root": str(data_cfg["root"]), "ok": not problems, "quick": quick,
            "splits": summary, "problems": [asdict(p) for p in problems]}


def refuse_target(target: str, data_cfg: dict):
    """Raise for a per-dataset target (eval_voc / eval_coco) asked of the other dataset kind."""
    want = target.rsplit("_", 1)[1]
    kind = data_cfg.get("kind", "voc")
    raise S2CError(
        f"{target} evaluates a {want.upper()} config, but this config has data.kind: {kind} "
        f"(data.root {data_cfg.get('root')}); run `snakemake eval_{kind}` (or plain `snakemake`), "
        f"or pass a {want.upper()} config, e.g. --configfile config/{want}.yaml"
    )


def format_problems(report: dict) -> str:
    probs = [Problem(**p) for p in report["problems"]]
    head = f"{report['kind'].upper()} dataset at {report['root']}: {len(probs)} problem(s)"
    return "\n".join([head, *(f"  {i + 1}. {p}" for i, p in enumerate(probs))])


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s2c prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-cfg", required=True, help="the config's data section as JSON")
    ap.add_argument("--train", nargs="+", required=True, help="training split(s): need images + image labels")
    ap.add_argument("--eval", nargs="*", default=[], help="evaluation split(s): also need label maps")
    ap.add_argument("--sam-model-type", default=None)
    ap.add_argument("--sam-checkpoint", default=None)
    ap.add_argument("--pretrained", nargs="*", default=[], help="user-supplied backbone weight files")
    ap.add_argument("--quick", action="store_true", help="COCO: take the image lists from the metadata cache")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here (only when ok)")
    a = ap.parse_args(argv)
    report = check_layout(json.loads(a.data_cfg), a.train, a.eval, quick=a.quick,
                          sam_model_type=a.sam_model_type, sam_checkpoint=a.sam_checkpoint or None,
                          pretrained=a.pretrained)
    if not report["ok"]:
        raise S2CError(format_problems(report))
    for split, s in report["splits"].items():
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    print(f"{report['kind'].upper()} layout at {report['root']}: ok")
    if a.out is not None:
        with atomic_path(a.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
