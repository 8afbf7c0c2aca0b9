"""Parameter counts must equal the reference PSPNet-ResNet50 (hszhao/semseg) exactly."""
import numpy as np
import pytest

from trainer.config import load_config
from trainer.model import PSPNet, ResNet50V2, build_model, count_params, split_params

REF_AUX_21 = 49_081_578
REF_NOAUX_21 = 46_716_373
# deep-stem ResNet-50 without fc: 23,508,032 (torchvision, no fc) - 7x7 stem + 3x3 stem
# + the wider layer1 input (128 instead of 64)
REF_BACKBONE = 23_631_808


def n_params(params) -> int:
    return sum(int(np.prod(p.shape)) for p in params)


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="module")
def nets():
    cfg = load_config("smoke")
    return {"aux": build_model(cfg), "noaux": build_model({**cfg, "aux": False})}


def test_trainable_counts_match_reference(nets):
    assert count_params(nets["aux"])["total"] == REF_AUX_21
    assert count_params(nets["noaux"])["total"] == REF_NOAUX_21
    assert n_params(nets["aux"].trainable_params()) == REF_AUX_21


def test_backbone_and_heads_split(nets):
    counts = count_params(nets["aux"])
    assert counts["backbone"] == REF_BACKBONE
    assert counts["backbone"] + counts["heads"] == counts["total"]
    backbone, heads = split_params(nets["aux"])
    assert all(p.name.startswith("backbone.") for p in backbone)
    assert not any(p.name.startswith("backbone.") for p in heads)
    assert {p.name.split(".")[0] for p in heads} == {"ppm", "head", "aux_head"}
    assert n_params(ResNet50V2().trainable_params()) == REF_BACKBONE


def test_only_classifiers_have_bias(nets):
    biased = sorted(p.name for p in nets["aux"].trainable_params() if p.name.endswith(".bias"))
    assert biased == ["aux_head.classifier.bias", "head.classifier.bias"]


def test_count_scales_with_classes_only_in_classifiers():
    net = PSPNet(classes=150, aux=True)
    # each extra class adds one 512-input and one 256-input classifier row, plus their biases
    assert count_params(net)["total"] == REF_AUX_21 + (150 - 21) * (512 + 1 + 256 + 1)


def test_dropout_seed_is_not_trainable(nets):
    net = nets["aux"]
    assert "dropout_seed" not in {p.name for p in net.trainable_params()}
    assert "dropout_seed" in {p.name for p in net.get_parameters()}
    assert not net.dropout_seed.requires_grad


def test_reference_parameter_names(nets):
    names = {p.name for p in nets["aux"].get_parameters()}
    for expected in ("backbone.conv1.weight", "backbone.bn3.gamma", "backbone.layer1.0.downsample.0.weight",
                     "backbone.layer1.0.downsample.1.moving_mean", "backbone.layer4.2.conv3.weight",
                     "ppm.stages.3.conv.weight", "head.conv.weight", "aux_head.classifier.weight"):
        assert expected in names
    shapes = {p.name: tuple(p.shape) for p in nets["aux"].get_parameters()}
    assert shapes["backbone.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["backbone.conv3.weight"] == (128, 64, 3, 3)
    assert shapes["backbone.layer1.0.conv1.weight"] == (64, 128, 1, 1)
    assert shapes["head.conv.weight"] == (512, 4096, 3, 3)
    assert shapes["aux_head.conv.weight"] == (256, 1024, 3, 3)


def test_sync_bn_has_same_parameters(nets):
    sync = PSPNet(classes=21, aux=True, sync_bn=True)
    from mindspore import nn
    assert any(isinstance(c, nn.SyncBatchNorm) for _, c in sync.cells_and_names())
    assert not any(isinstance(c, nn.SyncBatchNorm) for _, c in nets["aux"].cells_and_names())
    assert [(p.name, tuple(p.shape)) for p in sync.get_parameters()] == \
           [(p.name, tuple(p.shape)) for p in nets["aux"].get_parameters()]


def test_use_sync_bn_rule():
    from trainer.model import use_sync_bn
    assert use_sync_bn(8, "ascend") and use_sync_bn(2, "gpu")
    assert not use_sync_bn(1, "ascend") and not use_sync_bn(4, "cpu")


def test_initialisation_is_reproducible_by_seed():
    a, b, c = PSPNet(init_seed=7, aux=False), PSPNet(init_seed=7, aux=False), PSPNet(init_seed=8, aux=False)
    wa, wb, wc = (n.backbone.layer2[0].conv2.weight.asnumpy() for n in (a, b, c))
    assert np.array_equal(wa, wb)
    assert not np.array_equal(wa, wc)
    # Kaiming normal, fan_out = 128 * 3 * 3
    assert float(wa.std()) == pytest.approx(np.sqrt(2.0 / (128 * 9)), rel=0.02)
    assert np.array_equal(a.backbone.bn1.gamma.asnumpy(), np.ones(64, np.float32))
