"""Check every config section against the defaults of the stage that owns it, at DAG-build time.

The JSON schema (``workflow/schemas/config.schema.yaml``) validates the workflow-level keys; the
hyperparameter sections are owned by their stage modules, whose default dicts are the one place
defining those keys. :func:`resolve_sections` runs each stage's own resolver so that a typo such as
``cam.lrr`` fails before any job starts, with the stage's message naming the key.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from .errors import S2CError


def coerce_scalar(default: Any, value: Any) -> Any:
    """A string that stands for a number, boolean or null becomes one, where the default is not a string.

    ``snakemake --config 'cam={seed: 1}'`` hands nested values over as strings ("1"): Snakemake
    parses them with YAML's BaseLoader. Parsed again here with the safe loader, against the type
    of the default (lists element by element), so the command line means what the config file does.
    """
    if isinstance(value, list):
        return [coerce_scalar(default[0] if isinstance(default, list) and default else None, v) for v in value]
    if isinstance(value, dict):
        d = default if isinstance(default, dict) else {}
        return {k: coerce_scalar(d.get(k), v) for k, v in value.items()}
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:  # YAML 1.1 reads "2e-3" as a string
            return int(value) if isinstance(default, int) else float(value)
        except ValueError:
            pass
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, (bool, int, float)) or parsed is None:
        return parsed
    return value


def merge_section(defaults: dict, cfg: dict | None, section: str, *, ignore=frozenset(),
                  recurse: bool = False, opaque=frozenset()) -> dict:
    """``cfg`` over ``defaults`` (the one merge every stage uses); an unknown key raises S2CError
    naming it as ``section.key``, so typos fail loudly instead of being ignored.

    ``ignore``: keys of a shared section that belong to another stage (accepted, dropped).
    ``recurse``: merge dict-valued defaults key by key (sub-sections), except keys in ``opaque``,
    which are replaced whole.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults) - set(ignore))
    if unknown:
        raise S2CError(f"unknown config key(s) {', '.join(f'{section}.{k}' for k in unknown)}: {unknown} not in "
                       f"the {section} section; known keys: {sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for k, v in cfg.items():
        if k not in defaults:
            continue
        sub = defaults[k]
        if recurse and isinstance(sub, dict) and isinstance(v, dict) and k not in opaque:
            v = merge_section(sub, v, f"{section}.{k}", recurse=True, opaque=opaque)
        out[k] = coerce_scalar(sub, v)
    return out


def _resolvers() -> dict[str, Callable[[dict], dict]]:
    # Imported lazily: the stage modules pull in torch, which only the workflow parse needs here.
    from . import eval_cam, eval_seg, infer_cam, pseudo_labels, train_cam, train_seg

    return {
        "cam": train_cam.resolve_cfg,
        "infer_cam": lambda c: merge_section(infer_cam.DEFAULTS, c, "infer_cam"),
        "eval_cam": lambda c: merge_section(eval_cam.DEFAULTS, c, "eval_cam"),
        "pseudo": pseudo_labels.resolve_cfg,
        "seg": train_seg.resolve_cfg,
        "eval_seg": lambda c: merge_section(eval_seg.DEFAULTS, c, "eval_seg"),
    }


def resolve_sections(config: dict[str, Any]) -> dict[str, dict]:
    """Each stage section merged over its module defaults (ablations applied). Raises S2CError."""
    out = {}
    for section, resolve in _resolvers().items():
        cfg = config.get(section) or {}
        if not isinstance(cfg, dict):
            raise S2CError(f"config section {section!r} must be a mapping, got {type(cfg).__name__}")
        out[section] = resolve(cfg)
    return out
