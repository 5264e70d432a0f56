"""``cpu_kernels``: the environment ``portable`` gives every job, that torch and oneDNN obey it, and
that the workflow sets it (the demo's config asks for it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
