"""Training plumbing shared by the CAM and segmentation trainers.

Device choice, seeding, the poly LR schedule, resumable checkpoints, a resumable CSV loss log, thin
torch.distributed helpers for ``torchrun`` (gloo on CPU, nccl on CUDA), and :class:`TrainingRun`:
one job's checkpoint / loss log / model file with one convention for both trainers.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import S2CError
from .io import atomic_path, sha256_file
from .models import unwrap
from .plots import plot_csv

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- device / seeds
def select_device(spec: str = "auto") -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N`` to a device.

    ``auto`` = CUDA when available, else CPU. Under ``torchrun`` with several processes a bare
    ``cuda``/``auto`` picks ``cuda:$LOCAL_RANK`` so each process owns one GPU.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if spec in ("auto", "cuda") or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise S2CError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if spec.startswith("cuda:"):
            try:
                idx = int(spec.split(":", 1)[1])
            except ValueError:
                raise S2CError(f"--device {spec}: expected cuda:N with an integer N") from None
            if not 0 <= idx < torch.cuda.device_count():
                raise S2CError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
            return torch.device("cuda", idx)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    raise S2CError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Deterministic kernels are not forced."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay: ``base_lr * (1 - step/total) ** power``, clamped at 0 past ``total``."""
    if total <= 0:
        return base_lr
    frac = min(max(step, 0), total) / total
    return base_lr * (1.0 - frac) ** power


# ----------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Keeps ``<dir>/last.pt``: one resumable state, replaced atomically on every save.

    The state is any picklable dict; by convention it carries ``epoch`` (epochs completed),
    ``step`` (optimizer steps completed), ``model``, ``optimizer`` and RNG states.
    """

    def __init__(self, directory: str | os.PathLike, name: str = "last.pt"):
        self.dir = Path(directory)
        self.path = self.dir / name

    def save(self, state: dict) -> Path:
        """Write ``state`` to last.pt via a temporary file + rename (a kill never leaves half a file)."""
        if "epoch" not in state:
            raise S2CError(f"checkpoint state for {self.path} needs an 'epoch' key (epochs completed)")
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        return self.path

    def load(self, map_location: str | torch.device = "cpu") -> dict | None:
        """The saved state, or None when no checkpoint exists."""
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location=map_location, weights_only=False)
        except Exception as e:  # a truncated/corrupt pickle: say which file to delete
            raise S2CError(f"cannot read checkpoint {self.path} ({e.__class__.__name__}: {e}); "
                           "delete it to restart training from scratch") from None


def inputs_fingerprint(*paths: str | os.PathLike | None) -> str:
    """sha256 over the names and contents of the given files (folders: of every file inside).

    Stored in checkpoints so a run resumes only over the same inputs: Snakemake reruns a training
    job both after a kill (same inputs: resume) and after its inputs changed (new pseudo-labels, a
    rebuilt cache: start fresh). Contents, not mtimes: ``snakemake --touch``, a remount or a copy
    that does not keep times leaves the inputs the same, and the interrupted run must still resume."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_resumable(ckpt: "Checkpointer", identity: dict, epochs: int | None = None) -> dict | None:
    """The checkpoint's state when it is the resumable state of an *interrupted* run with the same
    ``identity`` (config and input fingerprint), else None (training starts from scratch):

    - written with another identity (config or inputs changed): stale, logged, fresh run;
    - written at the end of the last epoch (``state["epoch"] >= epochs``; ``epochs`` defaults to
      ``identity["cfg"]["epochs"]``): the run had finished, so the job runs again only because
      its outputs are gone or Snakemake was told to rerun it (``-R``/``--forcerun`` after a code
      change): a forced rerun trains fresh instead of "resuming" into the old model unchanged.
    """
    state = ckpt.load()
    if state is None:
        return None
    if state.get("identity") != identity:
        old = state.get("identity") or {}
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        log.warning("not resuming from %s: it was written with other %s; training from scratch",
                    ckpt.path, ", ".join(diff) or "settings")
        return None
    if epochs is None:
        epochs = (identity.get("cfg") or {}).get("epochs")
    if epochs is not None and int(state.get("epoch", 0)) >= int(epochs):
        log.warning("not resuming from %s: it is the final checkpoint of a finished run (epoch %s of %s); "
                    "a rerun (forced, or outputs deleted) trains from scratch", ckpt.path, state.get("epoch"), epochs)
        return None
    return state


def rng_state() -> dict:
    """Snapshot of python/numpy/torch(/cuda) RNGs, to store in a checkpoint."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore a :func:`rng_state` snapshot."""
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# ----------------------------------------------------------------------------- logging
class CSVLogger:
    """Append rows to a CSV with fixed columns; resumable without duplicated rows.

    ``resume_step=None`` starts a fresh file (header only). ``resume_step=k`` keeps the existing
    rows whose ``step_key`` value is < k (the steps a checkpoint already covers) and appends after
    them, so rows logged after the last checkpoint by a killed run are dropped, not duplicated.
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str], resume_step: int | None = None,
                 step_key: str = "step"):
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if step_key in row and int(float(row[step_key])) < resume_step:
                            kept.append(row)
                    except (TypeError, ValueError):
                        continue  # a half-written last line from a killed run
        # Rewrite via rename so a kill here cannot lose the rows we keep.
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fieldnames, extrasaction="ignore")
                w.writeheader()
                w.writerows(kept)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fieldnames, extrasaction="ignore")

    def log(self, row: dict[str, Any]) -> None:
        """Append one row (missing columns left empty) and flush."""
        self._w.writerow({k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "CSVLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- DDP
def ddp_init(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's env vars; returns (rank, world, local_rank).

    Without ``WORLD_SIZE`` (or with 1) this is a no-op returning (0, 1, 0). Backend: nccl when
    CUDA is available, else gloo; pass ``backend="gloo"`` to force CPU training on a GPU machine.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world, local_rank


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0 (and always when not distributed): the process that writes files."""
    return not is_dist() or dist.get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def ddp_cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_dist():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed); for logging only."""
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def wrap_ddp(model: torch.nn.Module, dev: torch.device, world: int) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when ``world > 1`` (one device per process), else itself."""
    if world <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def gather_rng_state(world: int):
    """Every rank's RNG state (rank order) so a resumed DDP run restores each process's streams;
    a single process stores its own state. A collective under DDP: call it on every rank."""
    st = rng_state()
    if world <= 1:
        return st
    allst = [None] * world
    dist.all_gather_object(allst, st)
    return allst


def micro_batches(batch: dict, size: int | None) -> list[tuple[dict, float]]:
    """A collated batch (every value a tensor or list with the images along its first axis) cut into
    slices of ``size`` images (None or ≥ the batch: the batch itself), each with its share of the
    batch's images: the weight of its loss when gradients are accumulated over the slices."""
    n = len(batch["labels"])
    if not size or size >= n:
        return [(batch, 1.0)]
    return [({k: v[i:i + size] for k, v in batch.items()}, min(size, n - i) / n) for i in range(0, n, size)]


def finite_loss(loss: torch.Tensor, stage: str, hint: str) -> float:
    """The loss averaged over ranks as a float; S2CError when it is NaN or infinite (the value is the
    same on every rank, so all of them stop together)."""
    value = float(all_reduce_mean(loss.detach()))
    if not math.isfinite(value):
        raise S2CError(f"{stage}: loss became {value}; {hint}")
    return value


# ----------------------------------------------------------------------------- one training job
class TrainingRun:
    """The files and DDP plumbing of one training job, the same for every trainer.

    In ``out``: ``last.pt`` (the resumable state, rewritten atomically after every epoch),
    ``losses.csv`` (one row per logged optimizer step; ``step`` = optimizer steps completed, so the
    first row is step 1 and a checkpoint at step k covers the rows up to k; ``epoch`` counts from
    1), ``losses.png`` (its plot, redrawn each epoch) and, last and atomically, ``model.pt``.

    A run resumes only a checkpoint with the same ``identity`` (config and input fingerprint) of an
    unfinished run (:func:`load_resumable`). Only rank 0 writes files; every method is called on
    every rank (``end_epoch`` and ``finish`` hold collectives).
    """

    def __init__(self, out: str | os.PathLike, identity: dict, fields: Sequence[str], world: int = 1,
                 plot_columns: Sequence[str] = ("loss",), title: str | None = None):
        self.out = Path(out)
        self.identity, self.fields, self.world = identity, list(fields), world
        self.plot_columns, self.title = list(plot_columns), title
        self.ckpt = Checkpointer(self.out)
        self.csv_path, self.png_path = self.out / "losses.csv", self.out / "losses.png"
        self.model_path = self.out / "model.pt"
        self.resumed = False
        self._log: CSVLogger | None = None

    def resume(self, model: torch.nn.Module, optimizer, scaler=None, rank: int = 0) -> tuple[int, int]:
        """Restore model, optimizer (, grad scaler) and this rank's RNG streams from ``last.pt`` when
        it is resumable; open the loss log (keeping the rows the checkpoint covers). Returns
        ``(epochs completed, optimizer steps completed)``, (0, 0) for a fresh run."""
        state = load_resumable(self.ckpt, self.identity)
        start_epoch = step = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
            start_epoch, step = state["epoch"], state["step"]
            self.resumed = True
            log.info("resuming from %s at epoch %d (step %d)", self.ckpt.path, start_epoch, step)
        if is_main():
            self._log = CSVLogger(self.csv_path, self.fields, resume_step=step + 1 if self.resumed else None)
        return start_epoch, step

    def log(self, row: dict[str, Any]) -> None:
        """Append a loss-log row (rank 0; a no-op elsewhere)."""
        if self._log is not None:
            self._log.log(row)

    def end_epoch(self, epoch: int, step: int, model: torch.nn.Module, optimizer, scaler=None,
                  **extra: Any) -> None:
        """After epoch ``epoch`` (1-based, = epochs completed): save ``last.pt`` (model, optimizer,
        grad scaler, every rank's RNG, the identity and ``extra``), redraw ``losses.png``; barrier."""
        rngs = gather_rng_state(self.world)
        if is_main():
            state = {"epoch": epoch, "step": step, "model": unwrap(model).state_dict(),
                     "optimizer": optimizer.state_dict(), "rng": rngs, "identity": self.identity, **extra}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            self.ckpt.save(state)
            plot_csv(self.csv_path, self.png_path, self.plot_columns, title=self.title)
        barrier()

    def finish(self, payload: dict) -> Path:
        """Close the loss log and write ``model.pt`` = ``payload`` atomically (rank 0); barrier."""
        self.close()
        if is_main():
            with atomic_path(self.model_path) as tmp:
                torch.save(payload, tmp)
        barrier()
        return self.model_path

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
