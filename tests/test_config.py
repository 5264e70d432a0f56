"""Config sections: one merge for every stage; values from ``snakemake --config`` mean what YAML does."""

import pytest

from s2c.config import coerce_scalar, merge_section, resolve_sections
from s2c.errors import S2CError


def test_merge_section_rejects_unknown_keys_naming_them():
    with pytest.raises(S2CError, match=r"cam\.lrr"):
        merge_section({"lr": 0.01}, {"lrr": 0.1}, "cam")


def test_strings_from_the_command_line_become_numbers_where_the_default_is_one():
    # snakemake --config 'cam={seed: 1, ...}' parses nested values with YAML's BaseLoader: all strings
    out = merge_section({"seed": 0, "lr": 0.01, "on": True, "size": None, "name": "x", "scales": [0.5, 1.0]},
                        {"seed": "1", "lr": "2e-3", "on": "false", "size": "64", "name": "7", "scales": ["1", "2.5"]},
                        "cam")
    assert out == {"seed": 1, "lr": 0.002, "on": False, "size": 64, "name": "7", "scales": [1, 2.5]}
    assert coerce_scalar(True, "weights/model.pth") == "weights/model.pth"  # a path stays a path
    assert coerce_scalar(None, "null") is None


def test_cam_section_from_command_line_strings_resolves_typed():
    cfg = resolve_sections({"cam": {"seed": "1", "epochs": "3", "output_stride": "16",
                                    "augment": {"crop_size": "128"}, "cpm": {"prompt_cam": "multiscale"}}})["cam"]
    assert (cfg["seed"], cfg["epochs"], cfg["output_stride"], cfg["augment"]["crop_size"]) == (1, 3, 16, 128)
    assert cfg["cpm"]["prompt_cam"] == "multiscale"
