"""PSPNet-ResNet50 in MindSpore: the model, its loss, and the helpers the training loop uses.

    net = build_model(cfg, sync_bn=use_sync_bn(world_size, backend))   # cfg from trainer.config
    loss_fn = build_loss(cfg)                                          # loss_fn(net(x), labels)
    backbone_params, head_params = split_params(net)                   # head LR = head_lr_mult x base
    net.set_dropout_seed(cfg["seed"], rank, global_step)               # before each step: exact resume

Importing this package imports MindSpore; the orchestrator never does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from .conv import Conv2d
from .dropout import SeededDropout2d, dropout_seed_for
from .loss import PSPLoss, SegCrossEntropy
from .norm import use_sync_bn
from .ppm import PPM, AdaptiveAvgPool
from .pretrained import LoadReport, PretrainedError, load_backbone_checkpoint
from .pspnet import PSPNet
from .resnet import ResNet50V2

__all__ = ["Conv2d", "PSPNet", "ResNet50V2", "PPM", "AdaptiveAvgPool", "SeededDropout2d", "PSPLoss", "SegCrossEntropy",
           "LoadReport", "PretrainedError", "build_model", "build_loss", "split_params", "count_params",
           "load_backbone_checkpoint", "use_sync_bn", "dropout_seed_for"]

BACKBONES = ("resnet50_v2",)


def build_model(cfg: Mapping[str, Any], sync_bn: bool = False, verbose: bool = True,
                conv_impl: str = "auto") -> PSPNet:
    """The config's PSPNet (keys: classes, aux, backbone, pretrained, seed).  With ``pretrained`` set, the
    ResNet-50 weights are loaded into the backbone and the report is printed (and kept as
    ``net.pretrained_report``).  ``conv_impl``: see trainer/model/conv.py (``auto`` = im2col on CPU).
    Set MindSpore's device before calling it, so that ``auto`` sees the right target."""
    backbone = cfg.get("backbone", "resnet50_v2")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not supported (use one of {', '.join(BACKBONES)})")
    net = PSPNet(classes=int(cfg.get("classes", 21)), aux=bool(cfg.get("aux", True)), sync_bn=sync_bn,
                 init_seed=int(cfg.get("seed", 0)), conv_impl=conv_impl)
    net.pretrained_report = None
    if cfg.get("pretrained"):
        net.pretrained_report = load_backbone_checkpoint(net.backbone, str(cfg["pretrained"]), verbose=verbose)
    return net


def build_loss(cfg: Mapping[str, Any]) -> PSPLoss:
    """Cross-entropy with ``ignore_label``; the aux term weighted by ``aux_weight`` (when ``aux`` is on)."""
    weight = float(cfg.get("aux_weight", 0.4)) if cfg.get("aux", True) else 0.0
    return PSPLoss(ignore_label=int(cfg.get("ignore_label", 255)), aux_weight=weight)


def split_params(net) -> Tuple[List, List]:
    """Trainable parameters of the backbone and of the heads (PPM, head, aux head), for the head LR."""
    backbone, heads = [], []
    for p in net.trainable_params():
        (backbone if p.name.startswith("backbone.") else heads).append(p)
    return backbone, heads


def count_params(net) -> Dict[str, int]:
    """Trainable parameter counts: ``{"total", "backbone", "heads"}``."""
    backbone, heads = split_params(net)
    n_b = sum(int(np.prod(p.shape)) for p in backbone)
    n_h = sum(int(np.prod(p.shape)) for p in heads)
    return {"total": n_b + n_h, "backbone": n_b, "heads": n_h}
