"""Seeded generator of a small PASCAL-VOC-layout dataset (demo pipeline and tests).

Each class has a distinctive shape + colour + texture (e.g. aeroplane = red triangle, bus = yellow
striped rectangle), so a small CAM classifier learns them in a few CPU epochs. Images have muted,
low-saturation textured backgrounds (luminance noise / gradient / stripes) and 1-3 objects (1: 45%,
2: 40%, 3: 15%) spanning ~28-60% of the short side of possibly different classes
that may overlap (an object is re-placed when it would hide more than half of an earlier one, so
every listed object stays visible and image labels equal the classes in the mask). Like VOC, a
thin band of 255 (ignore) is written along object boundaries.

Output under ``root`` (written to a temporary folder, then renamed into place)::

    JPEGImages/<id>.jpg  SegmentationClass/<id>.png  SegmentationClassAug/<id>.png
    Annotations/<id>.xml  ImageSets/Segmentation/{train,val,train_aug}.txt  SYNTHETIC.json

``train_aug`` = train ids + ``n_aug`` extra ids whose masks exist only in SegmentationClassAug
(mimicking SBD). Same arguments → byte-identical files.

CLI: ``python -m s2c.data.synthetic --root DIR --n-train 48 --n-val 16 --size 192 --seed 0``
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..classes import VOC20, voc_palette
from ..errors import S2CError
from ..io import atomic_path

# class name → (shape, RGB colour, texture). Shapes and textures are chosen to be mutually distinct.
APPEARANCE: dict[str, tuple[str, tuple[int, int, int], str]] = {
    "aeroplane": ("triangle", (220, 40, 40), "plain"),
    "bus": ("rectangle", (240, 200, 30), "hstripes"),
    "cat": ("ellipse", (245, 130, 20), "dots"),
    "person": ("capsule", (40, 80, 225), "vstripes"),
    "pottedplant": ("cross", (30, 170, 60), "checker"),
    "sheep": ("circle", (240, 240, 240), "noise"),
    "car": ("hexagon", (160, 40, 210), "plain"),
    "bottle": ("diamond", (0, 200, 200), "dots"),
}
DEFAULT_CLASSES: tuple[str, ...] = ("aeroplane", "bus", "cat", "person", "pottedplant", "sheep")
MARKER = "SYNTHETIC.json"
_SPLIT_CODE = {"train": 0, "val": 1, "aug": 2}


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Muted textured background, float32 (h, w, 3) in [0, 255]."""
    base = rng.uniform(70, 170) + rng.uniform(-25, 25, size=3)  # low saturation grey-ish
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # smooth noise: mostly luminance (colourful noise would mimic the classes' colours)
        gh, gw = max(2, h // 8), max(2, w // 8)
        small = (rng.normal(0, 22, size=(gh, gw, 1)) + rng.normal(0, 5, size=(gh, gw, 3))).astype(np.float32)
        img = base + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # linear gradient between two muted colours
        other = rng.uniform(70, 170) + rng.uniform(-25, 25, size=3)
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx / w + np.sin(a) * yy / h)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = base * (1 - t[..., None]) + other * t[..., None]
    else:  # soft oblique stripes
        a = rng.uniform(0, np.pi)
        period = rng.uniform(10, 30)
        s = np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period)
        img = base + 18 * s[..., None]
    return img.astype(np.float32)


def _shape_mask(shape: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """bool (h, w) mask of one object of ``shape`` at a random place, size and angle."""
    m = np.zeros((h, w), np.uint8)
    r = rng.uniform(0.14, 0.30) * min(h, w)  # half-size: objects span ~28-60% of the short side
    cx = rng.uniform(r * 0.6, w - r * 0.6)
    cy = rng.uniform(r * 0.6, h - r * 0.6)
    ang = rng.uniform(-np.pi, np.pi)

    def poly(radii_angles):
        pts = [(cx + rr * np.cos(ang + aa), cy + rr * np.sin(ang + aa)) for rr, aa in radii_angles]
        cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 1)

    if shape == "triangle":
        poly([(r, 0.0), (r, 2.4), (r, -2.4)])
    elif shape == "rectangle":
        tilt = rng.uniform(-20, 20)
        box = cv2.boxPoints(((cx, cy), (2 * r, 1.2 * r), tilt))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif shape == "ellipse":
        cv2.ellipse(m, (int(cx), int(cy)), (int(r), int(0.65 * r)), float(np.degrees(ang)), 0, 360, 1, -1)
    elif shape == "capsule":  # tall, nearly upright
        cv2.ellipse(m, (int(cx), int(cy)), (int(0.42 * r), int(r)), float(rng.uniform(-15, 15)), 0, 360, 1, -1)
    elif shape == "cross":
        for tilt in (0.0, 90.0):
            box = cv2.boxPoints(((cx, cy), (2 * r, 0.7 * r), float(np.degrees(ang)) + tilt))
            cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif shape == "circle":
        cv2.circle(m, (int(cx), int(cy)), int(0.85 * r), 1, -1)
    elif shape == "hexagon":
        poly([(r, k * np.pi / 3) for k in range(6)])
    elif shape == "diamond":
        ang = rng.uniform(-0.3, 0.3) + np.pi / 2
        poly([(r, 0.0), (0.5 * r, np.pi / 2), (r, np.pi), (0.5 * r, -np.pi / 2)])
    else:  # pragma: no cover - APPEARANCE is fixed
        raise ValueError(shape)
    return m.astype(bool)


def _texture(texture: str, colour: tuple[int, int, int], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Full-frame float32 (h, w, 3) fill of an object's colour with its texture."""
    c = np.array(colour, np.float32) * rng.uniform(0.85, 1.08)
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(5, 8))
    if texture == "hstripes":
        f = np.where((yy // (period // 2 + 1)) % 2 == 0, 1.0, 0.35)
    elif texture == "vstripes":
        f = np.where((xx // (period // 2 + 1)) % 2 == 0, 1.0, 0.45)
    elif texture == "dots":
        f = np.where(((yy % period) < 2) & ((xx % period) < 2), 0.2, 1.0)
    elif texture == "checker":
        f = np.where(((yy // period) + (xx // period)) % 2 == 0, 1.0, 0.5)
    elif texture == "noise":
        f = 1.0 - np.abs(rng.normal(0, 0.12, size=(h, w)))
    else:
        f = np.ones((h, w))
    return (c[None, None, :] * f[..., None]).astype(np.float32)


def render_image(size: int, classes: tuple[str, ...], rng: np.random.Generator):
    """One sample. Returns (image uint8 (H,W,3), label map uint8 (H,W), objects [(name, bbox)])
    with bbox = (xmin, ymin, xmax, ymax) 1-based inclusive (VOC XML convention)."""
    long_side, short_side = size, int(round(size * rng.uniform(0.75, 1.0)))
    h, w = (long_side, short_side) if rng.random() < 0.3 else (short_side, long_side)
    img = _background(h, w, rng)
    inst = np.zeros((h, w), np.int32)  # instance id map, 0 = background
    names: list[str] = []
    n_obj = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    for _ in range(n_obj):
        name = classes[int(rng.integers(len(classes)))]
        shape, colour, texture = APPEARANCE[name]
        for _try in range(20):
            m = _shape_mask(shape, h, w, rng)
            if m.sum() < 30:
                continue
            # Keep earlier objects mostly visible so every listed object is really in the image.
            ok = all((inst[m] == k).sum() <= 0.5 * (inst == k).sum() for k in range(1, len(names) + 1))
            if ok:
                break
        else:
            continue
        names.append(name)
        inst[m] = len(names)
        img[m] = _texture(texture, colour, h, w, rng)[m]
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    sem = np.zeros((h, w), np.uint8)
    objects = []
    for k, name in enumerate(names, start=1):
        ys, xs = np.nonzero(inst == k)
        if ys.size == 0:
            continue
        sem[inst == k] = VOC20.index(name) + 1
        objects.append((name, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
    # VOC-like ignore band: pixels whose 3x3 neighbourhood spans two labels.
    k3 = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(sem, k3) != cv2.erode(sem, k3)
    label = sem.copy()
    label[edge] = 255
    # An object may have been reduced to boundary only; drop it from the XML in that case.
    present = set(np.unique(label).tolist())
    objects = [o for o in objects if VOC20.index(o[0]) + 1 in present]
    return image, label, objects


def _xml(image_id: str, h: int, w: int, objects) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "SYNTHETIC"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "1"
    for name, (x0, y0, x1, y1) in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = name
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = "0"
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        for tag, v in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def make_synthetic_voc(
    root: str | Path,
    n_train: int = 48,
    n_val: int = 16,
    size: int = 192,
    seed: int = 0,
    classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES,
    n_aug: int = 0,
) -> Path:
    """Write the dataset to ``root`` atomically (replacing an earlier synthetic dataset there).

    Args:
        n_train, n_val: images in the train / val lists (train ⊆ train_aug).
        size: long side of every image in pixels (short side U[0.75, 1] × size).
        seed: everything is drawn from ``np.random.default_rng([seed, split, index])``.
        classes: VOC class names to use (each must have an entry in :data:`APPEARANCE`).
        n_aug: extra train_aug-only images whose masks exist only in SegmentationClassAug.
    Returns the root path.
    """
    root = Path(root)
    classes = tuple(classes)
    bad = [c for c in classes if c not in APPEARANCE]
    if bad or not classes:
        raise S2CError(f"synthetic classes {bad or classes} unsupported; choose from {', '.join(APPEARANCE)}")
    if n_train < 1 or n_val < 1 or n_aug < 0:
        raise S2CError(f"need n_train >= 1, n_val >= 1, n_aug >= 0 (got {n_train}, {n_val}, {n_aug})")
    if size < 32:
        raise S2CError(f"synthetic image size {size} is too small; use --size >= 32")
    # Empty folders are fine (Snakemake pre-creates the parents of a rule's outputs); files that
    # are not ours are never deleted.
    has_files = root.is_dir() and any(p.is_file() or p.is_symlink() for p in root.rglob("*"))
    if root.exists() and not root.is_dir():
        raise S2CError(f"--root {root} is a file; choose a folder for the synthetic dataset")
    if has_files and not (root / MARKER).is_file():
        raise S2CError(f"{root} exists and is not a synthetic dataset (no {MARKER}); choose an empty or new --root")

    params = {"n_train": n_train, "n_val": n_val, "n_aug": n_aug, "size": size, "seed": seed, "classes": list(classes)}
    palette = voc_palette()
    with atomic_path(root) as tmp:
        for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
            (tmp / d).mkdir(parents=True)
        lists: dict[str, list[str]] = {"train": [], "val": [], "aug": []}
        for split, n in (("train", n_train), ("val", n_val), ("aug", n_aug)):
            for i in range(n):
                image_id = f"syn_{split}_{i:04d}"
                rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
                image, label, objects = render_image(size, classes, rng)
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=92)
                png = Image.fromarray(label)  # mode L; putpalette turns it into P
                png.putpalette(palette)
                gt_dirs = ("SegmentationClassAug",) if split == "aug" else ("SegmentationClass", "SegmentationClassAug")
                for d in gt_dirs:
                    png.save(tmp / d / f"{image_id}.png")
                (tmp / "Annotations" / f"{image_id}.xml").write_bytes(_xml(image_id, *label.shape, objects))
                lists[split].append(image_id)
        sets = tmp / "ImageSets" / "Segmentation"
        (sets / "train.txt").write_text("".join(f"{i}\n" for i in lists["train"]))
        (sets / "val.txt").write_text("".join(f"{i}\n" for i in lists["val"]))
        (sets / "train_aug.txt").write_text("".join(f"{i}\n" for i in lists["train"] + lists["aug"]))
        (tmp / MARKER).write_text(json.dumps(params, indent=1) + "\n")
    return root
