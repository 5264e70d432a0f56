"""Where a train_cam step's time goes: bench/train_step.py with timers around each S2C component.

    .venv/bin/python bench/train_step_profile.py --modes cached            # any train_step.py flags
    .venv/bin/python bench/train_step_profile.py --modes cached --threads 1 --prompt-cam step

Runs ``bench/train_step.py`` unchanged (same data, batches, model and SAM) for each mode given and
prints, per mode, the mean seconds per step (warm-up step included) of: the no-grad prompting-CAM
forwards, SAM's decoder, mask post-processing (upsampling + warp into the crop), peak finding,
the pseudo-label, the SSC and CPM loss forwards, and the backward pass; ``rest`` is the classifier
forward and everything else. Nested timers are not double-counted: ``cpm targets`` is split into
its parts. Last line: ``<mode>_<component>=<share>`` of the biggest component per mode.
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import train_step  # noqa: E402

from s2c import objective  # noqa: E402
from s2c.data import transforms  # noqa: E402
from s2c.sam import prompt as sam_prompt  # noqa: E402

# (module, attribute, component); timers on nested calls are subtracted from their callers
TIMED = [
    (objective, "multiscale_prompt_cams", "prompting CAM (no-grad forwards)"),
    (objective, "find_peaks", "peaks"),
    (sam_prompt, "predict_masks", "SAM decoder"),
    (sam_prompt, "lowres_to_size", "mask upsampling"),
    (transforms.Geometry, "warp_to_crop_torch", "mask warp into the crop"),
    (objective, "cpm_pseudo_label", "pseudo-label"),
    (objective, "cpm_targets", "cpm targets (other)"),
    (objective, "ssc_loss", "SSC loss (forward)"),
    (objective, "cpm_loss", "CPM loss (forward)"),
]


class Timers:
    """Exclusive wall time per component: a timed call inside another is charged to itself only."""

    def __init__(self) -> None:
        self.total: dict[str, float] = collections.defaultdict(float)
        self._stack: list[float] = []  # time spent in nested timed calls, per open frame

    def wrap(self, fn, name: str):
        @functools.wraps(fn)
        def timed(*a, **k):
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                inner = self._stack.pop()
                self.total[name] += dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = "baseline,cached"
    if "--modes" in argv:
        modes = argv[argv.index("--modes") + 1]
        i = argv.index("--modes")
        del argv[i:i + 2]
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 3
    timers = Timers()
    for mod, attr, name in TIMED:
        setattr(mod, attr, timers.wrap(getattr(mod, attr), name))
    backward = torch.Tensor.backward
    torch.Tensor.backward = timers.wrap(backward, "backward")
    step_fn = objective.compute_losses
    objective.compute_losses = timers.wrap(step_fn, "rest (classifier forward, glue)")

    rows = {}
    for mode in modes.split(","):
        timers.total.clear()
        train_step.main(argv + ["--modes", mode])
        n = steps + 1  # the warm-up step is timed here too
        rows[mode] = {k: v / n for k, v in timers.total.items()}
    print(f"\nper step (s, warm-up included; {steps} + 1 steps)")
    names = [n for _, _, n in TIMED] + ["backward", "rest (classifier forward, glue)"]
    print(f"{'component':36s}" + "".join(f"{m:>12s}" for m in rows))
    for name in names:
        if any(r.get(name, 0.0) > 0 for r in rows.values()):
            print(f"{name:36s}" + "".join(f"{r.get(name, 0.0):12.3f}" for r in rows.values()))
    print(f"{'total':36s}" + "".join(f"{sum(r.values()):12.3f}" for r in rows.values()))
    tops = []
    for m, r in rows.items():
        top = max(r, key=r.get)
        tops.append(f"{m}_top={top.split(' (')[0].replace(' ', '_')}:{r[top] / sum(r.values()):.2f}")
    print(" ".join(tops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
