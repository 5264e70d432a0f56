"""Config sections: one merge for every stage; values from ``snakemake --config`` mean what YAML does."""

import pytest

from s2c.config import coerce_scalar, merge_section
from s2c.sections import resolve_sections
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


def _demo():
    import yaml

    from s2c.config import SCHEMA_PATH

    return yaml.safe_load((SCHEMA_PATH.parents[2] / "config" / "config.yaml").read_text())


def test_schema_coercion_of_command_line_strings():
    """What `--config` hands over (BaseLoader strings) validates as the file would."""
    from s2c.config import validate_config

    cfg = _demo()
    cfg["sam"].update(parts="2", amp="false", checkpoint="null")
    cfg["cam"].update(lr="1e-3", pretrained="false", augment={"resize_long": ["64", "96"], "crop_size": "64"})
    cfg["pseudo"] = {"threshold": "0.4", "crf": {"alpha": "null"}}
    cfg["data"]["gt_dir"] = "null"
    cfg["eval_seg"] = {"crf": "true"}
    validate_config(cfg)
    assert cfg["sam"]["parts"] == 2 and cfg["sam"]["amp"] is False and cfg["sam"]["checkpoint"] is None
    assert cfg["cam"]["lr"] == 1e-3 and cfg["cam"]["pretrained"] is False
    assert cfg["cam"]["augment"] == {"resize_long": [64, 96], "crop_size": 64}
    assert cfg["pseudo"]["threshold"] == 0.4 and cfg["pseudo"]["crf"]["alpha"] is None
    assert cfg["data"]["gt_dir"] is None and cfg["eval_seg"]["crf"] is True
    # a path stays a path, even one that looks like a number
    cfg = _demo()
    cfg["data"]["root"] = "2024"
    validate_config(cfg)
    assert cfg["data"]["root"] == "2024"


@pytest.mark.parametrize("mutate,line", [
    (lambda c: c["sam"].update(prts=2), "unknown config key(s) sam.prts in the sam section; known keys: amp,"),
    (lambda c: c["data"].pop("root"), "config section data is missing the required key 'root'"),
    (lambda c: c.update(sam=3), "config key sam = 3 must be of type object"),
    (lambda c: c["seg"].update(epochs=0), "config key seg.epochs = 0 must be >= 1"),
    (lambda c: c["cam"]["cpm"].update(tau=1.5), "config key cam.cpm.tau = 1.5 must be <= 1"),
])
def test_schema_errors_are_one_line_naming_the_key(mutate, line):
    from s2c.config import validate_config

    cfg = _demo()
    mutate(cfg)
    with pytest.raises(S2CError) as e:
        validate_config(cfg)
    assert str(e.value).startswith(line) and "\n" not in str(e.value), str(e.value)


def test_cli_string_of_a_mixed_enum_becomes_its_number():
    from s2c.config import _coerce_by_schema

    sch = {"type": ["integer", "string"], "enum": [0, 1, 2, "best"]}
    assert _coerce_by_schema("0", sch) == 0 and _coerce_by_schema("best", sch) == "best"
    assert _coerce_by_schema("7", sch) == "7"  # not in the enum: left for the validator to name
