"""``cpu_kernels``: the environment ``portable`` gives every job, that torch and oneDNN obey it, that
the workflow sets it (the demo's config asks for it), and that printed figures name it (s2c.machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from s2c import machine
from s2c.defaults import PORTABLE_CPU_ENV, cpu_kernel_env
from s2c.errors import S2CError
from test_workflow import smk

PROBE = """
import torch
print("capability", torch.backends.cpu.get_cpu_capability())
conv = torch.nn.Conv2d(16, 32, 3)  # large enough for PyTorch to hand it to oneDNN
conv(torch.randn(2, 16, 32, 32)).sum().backward()
"""


def test_modes():
    assert cpu_kernel_env("native") == {}
    assert cpu_kernel_env("portable") == PORTABLE_CPU_ENV
    with pytest.raises(S2CError, match="cpu_kernels"):
        cpu_kernel_env("fast")


def test_portable_env_pins_aten_and_onednn():
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_ENV}
    env.update(cpu_kernel_env("portable"), ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    assert "capability DEFAULT" in out
    isa = [line for line in out.splitlines() if line.startswith("onednn_verbose") and ",isa:" in line]
    if not isa:
        pytest.skip("this torch build does not run the convolution through oneDNN")
    assert "SSE4.1" in isa[0], isa[0]


def test_workflow_sets_it_for_the_demo_only_when_asked():
    demo = smk("-n", "eval_voc")
    assert "cpu_kernels: portable (ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41)" in demo.stdout + demo.stderr
    native = smk("-n", "eval_voc", "--config", "cpu_kernels=native")
    assert "cpu_kernels:" not in native.stdout + native.stderr


CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse4_1 avx avx2 fma
processor\t: 1
model name\t: Some CPU
flags\t\t: fpu sse4_1 avx avx2 fma
"""


def test_machine_names_the_cpu_kind_and_the_kernels(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert machine.cpu_flags(info) == ("Some CPU", {"fpu", "sse4_1", "avx", "avx2", "fma"})
    assert machine.cpu_flags(tmp_path / "absent") == ("unknown CPU", set())
    assert machine.kernels({}) == "native"
    assert machine.kernels(cpu_kernel_env("portable")) == "portable"
    assert machine.kernels({"ATEN_CPU_CAPABILITY": "default"}) == "native"  # half a pin is not portable
    assert machine.describe(cpuinfo=info).startswith("Some CPU, cpu=avx2, ")
    assert ", cpu_kernels portable, " in machine.describe(cpu_kernel_env("portable"), info)


def test_summary_prints_the_machine_under_the_table(tmp_path):
    m = tmp_path / "cam_train.json"
    m.write_text(json.dumps({"miou": 61.0, "iou": {"a": 61.0}, "threshold": 0.5}))
    env = {**os.environ, **cpu_kernel_env("portable")}
    out = subprocess.run([sys.executable, "-m", "s2c", "summary", str(m)], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[2].startswith("CAM (train)") and out[3] == ""
    assert out[4].startswith("machine: ") and "cpu_kernels portable" in out[4]
