"""Loading an ImageNet ResNet-50 .ckpt into the PSPNet backbone by name, with a clear report."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from trainer.model import PretrainedError, PSPNet, ResNet50V2, build_model, load_backbone_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="module")
def source():
    """A backbone with its own weights (different init seed) and its tensors by name."""
    from trainer.model.pspnet import init_weights
    bb = ResNet50V2()
    init_weights(bb, seed=99)
    bb.bn1.moving_mean.set_data(Tensor(np.full(64, 0.5, np.float32)))
    return {p.name: p.asnumpy() for p in bb.get_parameters()}


def save(path, tensors):
    ms.save_checkpoint([{"name": k, "data": Tensor(v)} for k, v in tensors.items()], str(path))
    return str(path)


@pytest.fixture(scope="module")
def net():
    return PSPNet(classes=21, aux=True, init_seed=0)


def test_wrapped_checkpoint_with_extras_loads_and_reports(tmp_path, source, net, capsys):
    tensors = {f"network.backbone.{k}": v for k, v in source.items()}
    tensors["network.backbone.fc.weight"] = np.zeros((1000, 2048), np.float32)       # ImageNet classifier
    tensors["moments.network.backbone.conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)  # optimizer state
    del tensors["network.backbone.layer4.2.conv3.weight"]                               # missing
    tensors["network.backbone.layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)  # wrong shape
    before = net.backbone.layer1[0].conv1.weight.asnumpy().copy()
    path = save(tmp_path / "resnet50.ckpt", tensors)

    report = load_backbone_checkpoint(net, path)

    assert report.missing == ["layer4.2.conv3.weight"]
    assert report.unexpected == ["network.backbone.fc.weight"]
    assert report.mismatched == [("layer1.0.conv1.weight", (64, 64, 1, 1), (64, 128, 1, 1))]
    assert len(report.ignored) == 1
    assert not report.ok
    assert len(report.loaded) == len(source) - 2
    # loaded tensors are the checkpoint's, BN statistics included; the others kept their values
    np.testing.assert_array_equal(net.backbone.conv1.weight.asnumpy(), source["conv1.weight"])
    np.testing.assert_array_equal(net.backbone.bn1.moving_mean.asnumpy(), np.full(64, 0.5, np.float32))
    np.testing.assert_array_equal(net.backbone.layer1[0].conv1.weight.asnumpy(), before)
    printed = capsys.readouterr().out
    assert "resnet50.ckpt" in printed and "layer4.2.conv3.weight" in printed and "fc.weight" in printed
    assert "(64, 64, 1, 1)" in printed
    assert report.as_dict()["mismatched"][0]["model"] == [64, 128, 1, 1]


def test_plain_and_torch_style_bn_names_load_completely(tmp_path, source):
    tensors = dict(source)
    for leaf_ms, leaf_pt in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
        tensors[f"bn2.{leaf_pt}"] = tensors.pop(f"bn2.{leaf_ms}")
    bb = ResNet50V2()
    report = load_backbone_checkpoint(bb, save(tmp_path / "plain.ckpt", tensors), verbose=False)
    assert report.ok and not report.unexpected and len(report.loaded) == len(source)
    for p in bb.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), source[p.name])


def test_build_model_loads_config_pretrained(tmp_path, source):
    path = save(tmp_path / "r50.ckpt", {f"backbone.{k}": v for k, v in source.items()})
    net = build_model({"classes": 21, "aux": False, "pretrained": path}, verbose=False)
    assert net.pretrained_report.ok
    np.testing.assert_array_equal(net.backbone.layer3[5].bn2.gamma.asnumpy(), source["layer3.5.bn2.gamma"])


def test_unreadable_file_is_a_clear_error(tmp_path, net):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(PretrainedError, match="broken.ckpt.*not a readable MindSpore .ckpt"):
        load_backbone_checkpoint(net, str(bad))
    with pytest.raises(PretrainedError, match="does not exist"):
        load_backbone_checkpoint(net, str(tmp_path / "nope.ckpt"))


def test_checkpoint_of_another_network_is_refused(tmp_path, net):
    path = save(tmp_path / "other.ckpt", {"encoder.block.0.w": np.zeros((3, 3), np.float32)})
    with pytest.raises(PretrainedError, match="none of its 1 tensors matches"):
        load_backbone_checkpoint(net, path)
