"""Read MXNet ``.params`` files (``mx.nd.save`` NDArray lists) without MXNet, and rename ResNet-38.

The ImageNet ResNet-38 of PSA/IRN/S2C is distributed only as the MXNet file
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``. MXNet is unmaintained and does not install on
current Python, so this module parses the binary format with ``struct``/``numpy``.

Binary layout (all integers little-endian), as written by ``NDArray::Save(stream, arrays, names)``:

    uint64  list magic            0x112
    uint64  reserved              0
    uint64  n                     number of arrays
    n × NDArray                   see below
    uint64  m                     number of names (m == n, or 0 for an unnamed list)
    m × (uint64 length, bytes)    UTF-8 names, e.g. "arg:res2a_branch1_weight"

One dense NDArray, in one of three encodings distinguished by its first uint32:

    V2 (0xF993FAC9, MXNet ≥ 0.11):  int32 storage type (0 = dense; sparse is rejected),
                                    uint32 ndim, ndim × int64 dims,
                                    int32 dev_type, int32 dev_id, int32 dtype flag, data
    V1 (0xF993FAC8):                uint32 ndim, ndim × int64 dims, then as V2 from dev_type
    legacy (anything else):         the uint32 *is* ndim, ndim × uint32 dims, then as V2
    (ndim == 0 is an empty array: nothing follows.)

dtype flags: 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64; data is
prod(dims) elements in C order. Names carry "arg:" (learned) or "aux:" (BN running stats) prefixes.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import S2CError, cli_main
from ..io import atomic_path

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA  # numpy-shape semantics (MXNet 2); same layout as V2 for dense arrays
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    def __init__(self, buf: bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise S2CError(
                f"{self.path} is truncated or not an MXNet .params file (needed {n} bytes at offset "
                f"{self.pos}, file has {len(self.buf)}); download it again"
            )
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        vals = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return vals if len(vals) > 1 else vals[0]


def _read_ndarray(r: _Reader) -> np.ndarray:
    magic = r.unpack("I")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        stype = r.unpack("i")
        if stype != 0:
            raise S2CError(f"{r.path}: sparse NDArray (storage type {stype}) is not supported; save dense arrays")
        ndim = r.unpack("i")
        dims = r.unpack(f"{ndim}q") if ndim > 0 else ()
    elif magic == NDARRAY_V1_MAGIC:
        ndim = r.unpack("i")
        dims = r.unpack(f"{ndim}q") if ndim > 0 else ()
    else:
        ndim = magic  # legacy files start directly with the shape
        if ndim > 32:
            raise S2CError(f"{r.path}: bad NDArray header 0x{magic:08x} at offset {r.pos - 4}; not an MXNet .params file")
        dims = r.unpack(f"{ndim}I") if ndim > 0 else ()
    if ndim <= 0:
        return np.zeros((0,), np.float32)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    _dev_type, _dev_id, flag = r.unpack("iii")
    if flag not in DTYPES:
        raise S2CError(f"{r.path}: unknown NDArray dtype flag {flag} at offset {r.pos - 4}")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(dims, dtype=np.int64))
    data = np.frombuffer(r.take(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def read_ndarray_list(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse an ``mx.nd.save`` file into {name: array} (names keep their "arg:"/"aux:" prefix)."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"MXNet params file not found: {path}")
    r = _Reader(path.read_bytes(), path)
    magic, _reserved = r.unpack("QQ")
    if magic != LIST_MAGIC:
        raise S2CError(f"{path} is not an MXNet NDArray list (magic 0x{magic:x}, expected 0x{LIST_MAGIC:x})")
    arrays = [_read_ndarray(r) for _ in range(r.unpack("Q"))]
    n_names = r.unpack("Q")
    names = [r.take(r.unpack("Q")).decode("utf-8") for _ in range(n_names)]
    if n_names != len(arrays):
        raise S2CError(f"{path} holds {len(arrays)} arrays but {n_names} names; expected a named parameter file")
    if r.pos != len(r.buf):
        raise S2CError(f"{path} has {len(r.buf) - r.pos} trailing bytes; the file is corrupt, download it again")
    return dict(zip(names, arrays))


_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var",
       "mean": "running_mean", "var": "running_var"}
# res4b3_branch2b1_weight, bn4b3_branch2b1_gamma, bn5a_branch2a_moving_var, …
_BLOCK = re.compile(r"^(res|bn)(\d)([ab])(\d*)_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var|mean|var)$")
_BN7 = re.compile(r"^bn7_(gamma|beta|moving_mean|moving_var|mean|var)$")


def resnet38d_name(mx_name: str) -> str | None:
    """MXNet ResNet-38 parameter name → the torch key of :class:`ResNet38d` (None: classifier).

    Same mapping as the reference ``convert_mxnet_to_torch``: block ``res4b3`` → ``b4_3``,
    ``res4a`` → ``b4``; ``res*`` are convolutions, ``bn*`` BatchNorms; ``bn7`` is the final BN.
    """
    name = mx_name.split(":", 1)[1] if mx_name.startswith(("arg:", "aux:")) else mx_name
    if name.startswith("linear1000"):
        return None
    if name == "conv1a_weight":
        return "conv1a.weight"
    m = _BN7.match(name)
    if m:
        return f"bn7.{_BN[m.group(1)]}"
    m = _BLOCK.match(name)
    if m:
        kind, stage, letter, index, branch, param = m.groups()
        block = f"b{stage}" if letter == "a" else f"b{stage}_{index}"
        if kind == "res" and param == "weight":
            return f"{block}.conv_{branch}.weight"
        if kind == "bn" and param in _BN:
            return f"{block}.bn_{branch}.{_BN[param]}"
    raise S2CError(f"unexpected parameter '{mx_name}' in the MXNet ResNet-38 file; is it ilsvrc-cls_rna-a1_cls1000_ep-0001.params?")


def resnet38d_state_dict_from_mxnet(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename an MXNet ResNet-38 parameter dict into a :class:`ResNet38d` state dict (float32)."""
    out = {}
    for k, v in arrays.items():
        key = resnet38d_name(k)
        if key is not None:
            out[key] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return out


def convert_resnet38d(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert the MXNet ResNet-38 ``src`` into a torch state dict file ``dst`` (written atomically)."""
    state_dict = resnet38d_state_dict_from_mxnet(read_ndarray_list(src))
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        torch.save(state_dict, tmp)
    return dst


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Convert the MXNet ResNet-38 once (``python -m s2c.models.mxnet_params SRC.params DST.pth``),
    so later runs load it with ``torch.load`` instead of parsing ~400 MB again."""
    ap = argparse.ArgumentParser(prog="python -m s2c.models.mxnet_params", description=main.__doc__)
    ap.add_argument("src", type=Path, help="the MXNet file, e.g. ilsvrc-cls_rna-a1_cls1000_ep-0001.params")
    ap.add_argument("dst", type=Path, help="output .pth (usable as cam.pretrained / seg.pretrained)")
    args = ap.parse_args(argv)
    print(f"wrote {convert_resnet38d(args.src, args.dst)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
