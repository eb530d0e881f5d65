import pytest
import torch
from torch import nn

from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import CNN, load_model


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg11_bn", "squeezenet1_0", "densenet121",
                                  "efficientnet_b0", "efficientnet_widese_b0"])
def test_architectures_have_the_right_output_and_channels(name):
    net = ca.ARCH_DICT[name](3, weights=None, num_channels=1).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 64, 64) if name != "alexnet" else torch.zeros(1, 1, 224, 224))
    assert out.shape == (1, 3)
    assert net.constructor_name == name and net.constructor_kwargs["num_channels"] == 1


def test_list_and_register():
    names = ca.list_architectures()
    for expected in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet", "vgg11_bn",
                     "squeezenet1_0", "densenet121", "inception_v3", "efficientnet_b0", "efficientnet_b4",
                     "efficientnet_widese_b0", "efficientnet_widese_b4"]:
        assert expected in names

    @ca.register_arch
    def tiny_net(num_classes, freeze_feature_extractor=False, weights=None, num_channels=3):
        return nn.Sequential(nn.Conv2d(num_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    assert "tiny_net" in ca.list_architectures()
    model = CNN("tiny_net", ["a", "b"], 1.0, sample_shape=(16, 16, 3))
    assert model.architecture_name == "tiny_net"
    ca.ARCH_DICT.pop("tiny_net")


def test_registered_custom_architecture_saves_safely(tmp_path):
    @ca.register_arch
    def tiny_net2(num_classes, freeze_feature_extractor=False, weights=None, num_channels=3):
        return nn.Sequential(nn.Conv2d(num_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    try:
        model = CNN(tiny_net2(2), ["a", "b"], 1.0, sample_shape=(16, 16, 3))
        model.save(tmp_path / "t.model")
        loaded = load_model(tmp_path / "t.model")
        for p, q in zip(model.network.parameters(), loaded.network.parameters(), strict=True):
            assert torch.equal(p, q)
    finally:
        ca.ARCH_DICT.pop("tiny_net2")


def test_freeze_and_change_layers():
    net = ca.resnet18(2, weights=None)
    ca.freeze_params(net)
    assert not any(p.requires_grad for p in net.parameters())
    frozen_fc = ca.resnet18(2, weights=None, freeze_feature_extractor=True)
    trainable = [n for n, p in frozen_fc.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]

    conv = nn.Conv2d(3, 8, 3)
    fewer = ca.change_conv2d_channels(conv, num_channels=1)
    assert fewer.in_channels == 1
    assert torch.allclose(fewer.weight[:, 0], conv.weight.mean(dim=1))
    more = ca.change_conv2d_channels(conv, num_channels=5)
    assert torch.equal(more.weight[:, 3], conv.weight[:, 0]) and torch.equal(more.weight[:, 4], conv.weight[:, 1])
    fc = ca.change_fc_output_size(nn.Linear(10, 3), 7)
    assert (fc.in_features, fc.out_features) == (10, 7)


def test_log_file(labelled_files, tmp_path):
    model = CNN(ca.resnet18(2, weights=None), ["frog", "other"], 2.0, sample_shape=(32, 32, 3))
    model.log_file = tmp_path / "train.log"
    model.train(labelled_files.head(2), labelled_files.head(2), epochs=1, batch_size=2, save_path=tmp_path,
                invalid_samples_log=None)
    text = (tmp_path / "train.log").read_text()
    assert "Training epoch 0" in text and "Validation score" in text
