"""Config sections: one merge for every stage; values from ``snakemake --config`` mean what YAML does."""

from pathlib import Path

import pytest
import yaml

from s2c.config import coerce_scalar, merge_section
from s2c.sections import resolve_eval_seg, resolve_sections, resolve_seg
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
    from s2c.sections import validate_workflow_config as validate_config

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
    from s2c.sections import validate_workflow_config as validate_config

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


def test_cam_resolver_checks_augment_keys():
    """cam.augment is checked by the cam section's own resolver (the one train_cam and the ablation
    rows use), not only by the DAG-build registry: a typo names cam.augment.<key>."""
    from s2c.sections import resolve_cam
    from s2c.stages.train_cam import resolve_cfg

    for resolve in (resolve_cam, resolve_cfg):
        with pytest.raises(S2CError, match=r"cam\.augment\.fllip"):
            resolve({"augment": {"fllip": True}})
        with pytest.raises(S2CError, match=r"cam\.augment"):
            resolve({"ablation": "baseline", "augment": {"resize_long": [300, 200]}})
    assert resolve_cam({"augment": {"crop_size": 64}})["augment"] == {"crop_size": 64}  # kept as given


def test_cam_allowed_words_come_from_the_library():
    """One place for each option's allowed values: the cam resolver's choices are the loss module's
    constants, and the schema does not restate them."""
    import yaml

    from s2c.config import SCHEMA_PATH
    from s2c import defaults
    from s2c.sections import CAM_CHOICES

    assert CAM_CHOICES[("cpm", "alpha_sam")] is defaults.ALPHA_SAM and CAM_CHOICES[("cpm", "loss")] is defaults.LOSS_MODES
    cam = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["cam"]["properties"]
    for path in CAM_CHOICES:
        node = cam
        for p in path[:-1]:
            node = node[p]["properties"]
        assert "enum" not in node[path[-1]], f"cam.{'.'.join(path)}: allowed values restated in the schema"


def test_bad_cam_words_fail_in_the_dag_build_registry():
    from s2c.sections import CAM_CHOICES

    for path in CAM_CHOICES:
        cam: dict = {}
        node = cam
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = "no_such_choice"
        with pytest.raises(S2CError, match=rf"cam\.{'.'.join(path)} = 'no_such_choice'; use one of"):
            resolve_sections({"cam": cam})
    with pytest.raises(S2CError, match="pseudo.refine"):
        resolve_sections({"pseudo": {"refine": "dense"}})


def test_schema_enums_that_mirror_library_constants_equal_them():
    """Where the schema keeps an enum (workflow-level keys it must check itself), it is the library's list."""
    import yaml

    from s2c.config import SCHEMA_PATH
    from s2c.models.backbones import BACKBONES
    from s2c.sam.build import SAM_MODEL_TYPES
    from s2c.defaults import IMPLS, OVERLAP_RULES
    from s2c.sections import ABLATIONS, MULTIMASK_INDEX

    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]
    ev = props["sam"]["properties"]["everything"]["properties"]
    pairs = {
        "sam.model_type": (props["sam"]["properties"]["model_type"]["enum"], SAM_MODEL_TYPES),
        "sam.everything.impl": (ev["impl"]["enum"], IMPLS),
        "sam.everything.overlap": (ev["overlap"]["enum"], OVERLAP_RULES),
        "cam.backbone": (props["cam"]["properties"]["backbone"]["enum"], tuple(BACKBONES)),
        "seg.backbone": (props["seg"]["properties"]["backbone"]["enum"], tuple(BACKBONES)),
        "cam.cpm.multimask_index": (props["cam"]["properties"]["cpm"]["properties"]["multimask_index"]["enum"],
                                    MULTIMASK_INDEX),
        "ablations.rows": (props["ablations"]["properties"]["rows"]["items"]["enum"], tuple(ABLATIONS)),
    }
    for key, (schema, lib) in pairs.items():
        assert sorted(map(str, schema)) == sorted(map(str, lib)), key


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "config").glob("*.yaml")))
def test_configs_score_the_seg_net_inside_its_training_scales(name):
    """eval_seg's test scales lie in the seg net's training rescale range (each file over the
    defaults): a net trained on images shrunk to 0.4-0.6 and scored at full size meets objects at
    twice the size it learned."""
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / name).read_text()) or {}
    lo, hi = resolve_seg(cfg.get("seg"))["scale_range"]
    scales = resolve_eval_seg(cfg.get("eval_seg"))["scales"]
    assert all(lo <= s <= hi for s in scales), f"config/{name}: eval_seg.scales {scales} outside seg.scale_range {[lo, hi]}"
