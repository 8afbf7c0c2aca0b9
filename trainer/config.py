"""Training configs: YAML files in trainer/configs/ plus KEY=VALUE overrides.

No MindSpore here, so the launcher can check a config in a child process cheaply:
``python -m trainer.config --config voc2012 epochs=2 --json`` prints the resolved config and its sha,
or a clear error (exit 2).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Short names users type: --config voc2012
ALIASES = {
    "voc2012": "voc2012_pspnet50.yaml",
    "voc": "voc2012_pspnet50.yaml",
    "ade20k": "ade20k_pspnet50.yaml",
    "ade": "ade20k_pspnet50.yaml",
    "smoke": "smoke.yaml",
}
DEFAULT_CONFIG = "smoke"

#: Every key a config may set, with its default and meaning.  Types come from the defaults.
SCHEMA: Dict[str, Tuple[Any, str]] = {
    "name": ("PSPNet", "model name, for logs"),
    "backbone": ("resnet50_v2", "backbone: resnet50_v2 (deep stem ResNet-50, output stride 8)"),
    "dataset": ("voc2012", "list-file layout: voc2012 (VOC2012-AUG/SBD) or ade20k (labels shifted, 0 -> 255)"),
    "data_root": ("", "data set root; list-file paths are relative to it"),
    "train_list": ("train.txt", "training list file, relative to data_root"),
    "val_list": ("val.txt", "validation list file, relative to data_root"),
    "synthesize_if_missing": (False, "generate a small VOC-format data set at data_root if it is missing"),
    "synth_images": (48, "images in a generated data set (train + val)"),
    "classes": (21, "number of classes"),
    "ignore_label": (255, "label value that is ignored by loss and metrics"),
    "base_size": (512, "evaluation resize base"),
    "crop_size": (473, "training crop (square)"),
    "scale_min": (0.5, "random scale lower bound"),
    "scale_max": (2.0, "random scale upper bound"),
    "rotate_min": (-10.0, "random rotation lower bound, degrees"),
    "rotate_max": (10.0, "random rotation upper bound, degrees"),
    "aux": (True, "auxiliary head on layer3"),
    "aux_weight": (0.4, "weight of the auxiliary loss"),
    "pretrained": ("", "ResNet-50 ImageNet checkpoint (.ckpt) for the backbone; empty: random init"),
    "init_lr": (0.01, "base learning rate (backbone)"),
    "lr_power": (0.9, "poly learning-rate power"),
    "head_lr_mult": (10.0, "learning-rate multiple of the heads over the backbone"),
    "momentum": (0.9, "SGD momentum"),
    "weight_decay": (0.0001, "SGD weight decay"),
    "batch_size": (16, "training batch size per device"),
    "batch_size_val": (16, "validation batch size per device"),
    "epochs": (50, "training epochs"),
    "max_steps_per_epoch": (0, "cap on steps per epoch (0: the whole shard)"),
    "seed": (1234, "random seed: data order and augmentation come from (seed, epoch, sample), dropout from (seed, rank, step)"),
    "workers": (2, "parallel data-loading workers per rank"),
    "val_every": (1, "validate every N epochs (0: never)"),
    "ckpt_every": (1, "checkpoint every N epochs (0: only the last)"),
    "ckpt_every_steps": (0, "also checkpoint every N global steps (0: off)"),
    "keep_checkpoints": (3, "periodic checkpoints kept per rank"),
    "log_every": (1, "emit a step event every N steps"),
    "output_dir": ("", "where checkpoints go when not under a job dir (default ./runs/single)"),
}

#: Keys that change neither the model nor the optimisation: a checkpoint made under other values
#: of these still resumes.
RUN_ONLY_KEYS = frozenset({
    "data_root", "synthesize_if_missing", "synth_images", "workers", "val_every", "ckpt_every",
    "ckpt_every_steps", "keep_checkpoints", "log_every", "output_dir", "batch_size_val", "base_size",
    "pretrained", "name",
})


class ConfigError(ValueError):
    """A config problem, worded for the user (which file, which key, what to do)."""


def resolve_config_path(name_or_path: Optional[str]) -> Path:
    name = name_or_path or DEFAULT_CONFIG
    candidates = []
    p = Path(os.path.expanduser(name))
    if p.suffix in (".yaml", ".yml") or os.sep in name:
        candidates.append(p)
    if name in ALIASES:
        candidates.append(CONFIG_DIR / ALIASES[name])
    candidates += [CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(set(ALIASES) | {f.stem for f in CONFIG_DIR.glob("*.yaml")})
    raise ConfigError(f"config {name!r} not found: give a YAML file path or one of {', '.join(known)}")


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid keys: {', '.join(sorted(SCHEMA))})"


def _coerce(key: str, value: Any, where: str) -> Any:
    default = SCHEMA[key][0]
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a valid {type(default).__name__} "
                          f"({SCHEMA[key][1]})") from None


def parse_overrides(items: Iterable[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. epochs=2)")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def load_config(name_or_path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults <- YAML file <- overrides, type-checked; raises ConfigError with file and key."""
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of KEY: VALUE")
    cfg = {k: v[0] for k, v in SCHEMA.items()}
    for key, value in raw.items():
        if key not in SCHEMA:
            raise ConfigError(f"{path}: unknown key {key!r}{_closest(str(key))}")
        cfg[key] = _coerce(key, value, str(path))
    for key, value in (overrides or {}).items():
        if key not in SCHEMA:
            raise ConfigError(f"override: unknown key {key!r}{_closest(key)}")
        cfg[key] = _coerce(key, value, "override")
    _check(cfg, str(path))
    if cfg["data_root"]:
        root = Path(os.path.expanduser(cfg["data_root"]))
        if not root.is_absolute():
            root = (Path.cwd() / root)
        cfg["data_root"] = str(root)
    cfg["_path"] = str(path)
    return cfg


def _check(cfg: Dict[str, Any], where: str) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")
    need(cfg["classes"] >= 2, "classes must be at least 2")
    need(cfg["crop_size"] >= 33, "crop_size must be at least 33 (output stride 8 and bins up to 6)")
    need(cfg["batch_size"] >= 1 and cfg["batch_size_val"] >= 1, "batch sizes must be positive")
    need(cfg["epochs"] >= 1, "epochs must be at least 1")
    need(0 < cfg["scale_min"] <= cfg["scale_max"], "need 0 < scale_min <= scale_max")
    need(cfg["rotate_min"] <= cfg["rotate_max"], "need rotate_min <= rotate_max")
    need(cfg["dataset"] in ("voc2012", "ade20k"), "dataset must be voc2012 or ade20k")
    need(cfg["backbone"] == "resnet50_v2", "backbone must be resnet50_v2")
    need(cfg["init_lr"] > 0, "init_lr must be positive")
    need(cfg["keep_checkpoints"] >= 1, "keep_checkpoints must be at least 1")


def config_sha(cfg: Dict[str, Any]) -> str:
    """Identity of what a checkpoint depends on (RUN_ONLY_KEYS and private keys left out)."""
    core = {k: v for k, v in sorted(cfg.items()) if not k.startswith("_") and k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.config",
                                     description="Resolve a training config and print it (no MindSpore needed).")
    parser.add_argument("--config", default=None, help=f"name ({', '.join(sorted(ALIASES))}) or YAML path")
    parser.add_argument("--json", action="store_true", help="print JSON: {config, config_sha}")
    parser.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.keys:
        for k, (d, h) in SCHEMA.items():
            print(f"{k:24s} {d!r:>16}  {h}")
        return 0
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"config": cfg, "config_sha": config_sha(cfg)}))
    else:
        for k, v in cfg.items():
            print(f"{k}: {v}")
        print(f"config_sha: {config_sha(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
