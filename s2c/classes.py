"""The class lists: the one place that defines class names, ids and the COCO→VOC mapping.

Conventions used everywhere in s2c:
- *foreground* classes are indexed 0..C-1 in classifier outputs (logits, CAMs, multi-hot labels);
- label maps (GT, pseudo-labels, predictions) use 0 = background, c+1 = foreground class c,
  255 = ignore.
"""

from __future__ import annotations

from .errors import S2CError

VOC20: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# COCO-2017 category names in official category-id order (ids are not contiguous: see COCO80_IDS).
COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
COCO80_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)

# COCO names that differ from their VOC counterpart; the other 14 VOC classes share the name.
COCO_TO_VOC_NAME: dict[str, str] = {
    "airplane": "aeroplane",
    "couch": "sofa",
    "tv": "tvmonitor",
    "dining table": "diningtable",
    "motorcycle": "motorbike",
    "potted plant": "pottedplant",
}

CLASS_SETS: dict[str, tuple[str, ...]] = {"voc20": VOC20, "coco80": COCO80}

# The standard PASCAL VOC colour map (bit-interleaved), used for every palette PNG we write.
def voc_palette(n: int = 256) -> list[int]:
    """Flat [r0,g0,b0, r1,...] palette of n entries, the VOC colour map (255 → white-ish)."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def class_names(class_set: str) -> tuple[str, ...]:
    """Foreground class names of a class set ('voc20' or 'coco80'), index = foreground id."""
    try:
        return CLASS_SETS[class_set]
    except KeyError:
        raise S2CError(f"unknown class_set {class_set!r}; use one of {sorted(CLASS_SETS)}") from None


def num_classes(class_set: str) -> int:
    """Number of foreground classes C."""
    return len(class_names(class_set))


def coco_category_to_index(class_set: str) -> dict[int, int]:
    """Map COCO category id → foreground index in ``class_set``; categories not in the set are absent
    (their pixels become 255 in semantic masks)."""
    if class_set == "coco80":
        return {cid: i for i, cid in enumerate(COCO80_IDS)}
    if class_set == "voc20":
        out = {}
        for cid, name in zip(COCO80_IDS, COCO80):
            voc = COCO_TO_VOC_NAME.get(name, name)
            if voc in VOC20:
                out[cid] = VOC20.index(voc)
        assert len(out) == 20
        return out
    raise S2CError(f"unknown class_set {class_set!r}; use one of {sorted(CLASS_SETS)}")
