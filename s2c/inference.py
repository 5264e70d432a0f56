"""Applying trained models: the CAM classifier's multi-scale CAMs, the segmentation net's
test-time-augmented probabilities, and reading arbitrary image files for them.

Shared by the stages that run a trained model (infer_cam, eval_seg, predict), so that the CAMs of
the pipeline and of a folder of new images, and the predictions of eval_seg and predict, come from
one function each.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .data.transforms import normalize
from .errors import S2CError
from .models import build_classifier, build_deeplab, read_cam_checkpoint
from .sections import resolve_seg

__all__ = ["load_classifier", "multiscale_cams", "load_seg_model", "predict_probs", "read_any_image"]


def load_classifier(path: str | Path, weights_dir: str | Path | None = None,
                    device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a trained CAM classifier saved as {"model", "cam_cfg", "num_classes", "class_set"}.

    Returns (model in eval mode on ``device``, the file's metadata without the state dict).
    """
    ckpt = read_cam_checkpoint(path)
    # pretrained weights are overwritten by the state dict: never download/read them here
    cam_cfg = dict(ckpt["cam_cfg"], pretrained=False)
    with warnings.catch_warnings():
        # the builder warns about frozen BN without pretrained weights; here the trained state
        # dict (BN statistics included) replaces everything right away
        warnings.filterwarnings("ignore", message=".*freeze_bn.*", category=UserWarning)
        model = build_classifier(cam_cfg, int(ckpt["num_classes"]), weights_dir)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise S2CError(f"model file {path} does not match its cam_cfg ({str(e).splitlines()[0]})") from None
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return model.to(device).eval(), meta


@torch.no_grad()
def multiscale_cams(model: torch.nn.Module, image: np.ndarray, classes: Sequence[int],
                    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0), flip: bool = True,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Multi-scale (× flip) CAMs of ``classes`` for one image.

    image: uint8 (H, W, 3) RGB. classes: K foreground indices. Returns float32 (K, H, W): the sum
    over scales/flips of ReLU CAMs bilinearly resized to (H, W), each class divided by its max
    (+1e-5, as in the reference code, so an all-zero CAM stays 0).
    """
    H, W = image.shape[:2]
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    if classes.numel() == 0:
        return np.zeros((0, H, W), np.float32)
    x = normalize(image).unsqueeze(0).to(device)
    acc = torch.zeros((classes.numel(), H, W), device=device)
    for s in scales:
        size = (max(1, round(H * s)), max(1, round(W * s)))
        xs = x if size == (H, W) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)], 0)
        cams = F.relu(model(xs)["cams"][:, classes.to(device)])
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        acc += F.interpolate(cams, size=(H, W), mode="bilinear", align_corners=False)[0]
    acc /= acc.flatten(1).amax(1)[:, None, None] + 1e-5
    return acc.float().cpu().numpy()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, image: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Test-time-augmented class probabilities.

    image: normalised float (3,H,W) on the model's device. Returns float32 (K,H,W): the mean over
    scales (× flips) of softmax(model(resized image)) bilinearly resized back to (H,W).
    """
    if not scales:
        raise S2CError("eval_seg: config key 'scales' must list at least one scale")
    H, W = image.shape[-2:]
    acc = None
    for s in scales:
        x = image[None]
        if s != 1.0:
            x = F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                              align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        p = model(x).float().softmax(1)
        if flip:
            p = p[:1] + p[1:].flip(-1)
        p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)[0]
        acc = p if acc is None else acc + p
    return acc / (len(scales) * (2 if flip else 1))


def load_seg_model(model_path: str | Path, weights_dir: str | Path | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(DeepLab in eval mode on ``device``, the model.pt dict without its weights)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise S2CError(f"segmentation model not found: {model_path} (run train_seg first)")
    try:
        ck = torch.load(model_path, map_location="cpu", weights_only=False)
        sd, cfg, K = ck["model"], ck["seg_cfg"], int(ck["num_classes"])
    except Exception as e:
        raise S2CError(f"cannot read segmentation model {model_path} ({e.__class__.__name__}: {e}); "
                       "re-run train_seg to rewrite it") from None
    # The trained weights replace everything, so never fetch ImageNet weights here.
    model = build_deeplab({**resolve_seg(cfg), "pretrained": False}, K, weights_dir)
    model.load_state_dict(sd)
    return model.to(device).eval(), {k: v for k, v in ck.items() if k != "model"}


def read_any_image(path: str | Path) -> np.ndarray:
    """Any image file PIL opens (JPEG, PNG, grey, CMYK, palette, alpha, 16-bit) as uint8 RGB (H, W, 3),
    turned upright by its EXIF orientation: what a camera image looks like to its viewer.
    S2CError naming the file when it is not an image."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: keep the contrast
                a = np.asarray(im, dtype=np.float64)
                a = (a - a.min()) / max(a.max() - a.min(), 1) * 255
                im = Image.fromarray(a.astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")  # transparent pixels on white, as a viewer shows them
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise S2CError(f"cannot read image {path} ({e.__class__.__name__}: {e}); "
                       "remove it from the folder or convert it to PNG/JPEG") from None
