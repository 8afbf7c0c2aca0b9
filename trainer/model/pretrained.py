"""Load an ImageNet ResNet-50 checkpoint (MindSpore .ckpt) into the PSPNet backbone by name.

Names are matched after stripping common wrapper prefixes (``network.``, ``backbone.``, ``model.``,
``module.``, ``resnet.`` ...) from the checkpoint's keys, and PyTorch-style BatchNorm names
(``weight``/``bias``/``running_mean``/``running_var``) are accepted for MindSpore's
(``gamma``/``beta``/``moving_mean``/``moving_variance``).  Optimizer state in the file (``moments.*``,
``learning_rate`` ...) is ignored.  The result is a report of what was loaded, what the backbone still
misses, what the file had that the backbone does not use, and what had the wrong shape.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

#: wrapper prefixes stripped from checkpoint keys (repeatedly, in any order)
PREFIXES = ("network.", "_backbone.", "backbone.", "model.", "module.", "resnet.", "net.", "encoder.",
            "features.")
#: keys that are optimizer or training state, not weights
STATE_PREFIXES = ("moments.", "accum.", "moment1.", "moment2.", "momentum.", "learning_rate", "global_step",
                  "scale_sense", "current_iterator_step", "last_overflow_iterator_step", "epoch_num",
                  "step_num", "beta1_power", "beta2_power")
#: PyTorch BatchNorm names -> MindSpore's
TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class PretrainedError(RuntimeError):
    """The checkpoint cannot be used (unreadable, or nothing in it fits the backbone)."""


@dataclass
class LoadReport:
    path: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def as_dict(self) -> dict:
        return {"path": self.path, "loaded": len(self.loaded), "missing": list(self.missing),
                "unexpected": list(self.unexpected),
                "mismatched": [{"name": n, "checkpoint": list(a), "model": list(b)} for n, a, b in self.mismatched],
                "ignored": len(self.ignored)}

    def format(self, limit: int = 20) -> str:
        lines = [f"pretrained {self.path}: loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape mismatch {len(self.mismatched)}, "
                 f"optimizer state ignored {len(self.ignored)}"]

        def block(title: str, items: List[str]) -> None:
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {s}" for s in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        block("missing (left at their initial values)", self.missing)
        block("unexpected (in the file, not in the backbone)", self.unexpected)
        block("shape mismatch (not loaded)",
              [f"{n}: checkpoint {tuple(a)} vs model {tuple(b)}" for n, a, b in self.mismatched])
        return "\n".join(lines)


def strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
                changed = True
    return name


def _read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    import mindspore as ms
    if not os.path.isfile(path):
        raise PretrainedError(f"pretrained checkpoint {path!r} does not exist: set pretrained= to a MindSpore "
                              f".ckpt file (or leave it empty for a random initialisation)")
    try:
        params = ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with long messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedError(f"pretrained checkpoint {path!r} is not a readable MindSpore .ckpt "
                              f"({first[:200]}); convert it with mindspore.save_checkpoint") from None
    return {k: v.asnumpy() for k, v in params.items()}


def load_backbone_checkpoint(backbone, path: str, verbose: bool = True) -> LoadReport:
    """Copy the matching tensors of ``path`` into ``backbone`` (a ResNet50V2, or a PSPNet: then its
    ``backbone``) and return the report; raises PretrainedError if the file is unreadable or none of its
    tensors fits."""
    from mindspore import Tensor
    backbone = getattr(backbone, "backbone", backbone)
    path = os.fspath(path)
    ckpt = _read_checkpoint(path)
    report = LoadReport(path=path)
    own = {p.name: p for p in backbone.get_parameters()}
    # the backbone's own names, relative to it (a PSPNet's backbone names start with "backbone.")
    rel = {strip_prefixes(n): p for n, p in own.items()}
    by_key: Dict[str, str] = {}
    for key in ckpt:
        if key.startswith(STATE_PREFIXES):
            report.ignored.append(key)
            continue
        name = strip_prefixes(key)
        if name not in rel:
            head, _, leaf = name.rpartition(".")
            alt = f"{head}.{TORCH_BN.get(leaf, leaf)}"
            if alt in rel and leaf in TORCH_BN:
                name = alt
        if name in rel and name not in by_key:
            by_key[name] = key
        else:
            report.unexpected.append(key)
    for name, param in rel.items():
        key = by_key.get(name)
        if key is None:
            report.missing.append(name)
            continue
        value = ckpt[key]
        if tuple(value.shape) != tuple(param.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(param.shape)))
            continue
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32)
        param.set_data(Tensor(value))
        report.loaded.append(name)
    if not report.loaded:
        sample = ", ".join(sorted(ckpt)[:5]) or "(empty)"
        raise PretrainedError(f"pretrained checkpoint {path!r}: none of its {len(ckpt)} tensors matches the "
                              f"ResNet-50 backbone by name and shape (its keys look like: {sample}); expected "
                              f"names like conv1.weight, bn1.gamma, layer1.0.conv1.weight")
    if verbose:
        print(report.format(), flush=True)
    return report
