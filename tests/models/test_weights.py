"""A user's checkpoint into a built model: the forms people save, and every way one can be wrong."""

import pytest
import torch
from safetensors.torch import save_file

from modelpress import models
from modelpress.core.errors import ModelpressError

RESNET = "torchvision:resnet18"


def _resnet(num_classes=10, channels=3, seed=0, **norm):
    torch.manual_seed(seed)
    return models.build(models.make_spec(RESNET, [channels, 32, 32], num_classes, **norm)).eval()


@pytest.fixture(scope="module")
def trained():
    """A user's resnet18 (10 classes) and its state dict, as torch.save(model.state_dict()) writes it."""
    model = _resnet(seed=1)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small():
    """A small built-in network, where only the file's form is under test."""
    spec = models.make_spec("cnn", [3, 8, 8], 4, channels=[4, 8])
    torch.manual_seed(3)
    model = models.build(spec).eval()
    return spec, model, {k: v.clone() for k, v in model.state_dict().items()}


def _same_outputs(a, b, shape=(3, 32, 32)):
    x = torch.randn(2, *shape)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_state_dict_pth_into_a_normalised_model(tmp_path, trained):
    user_model, state = trained
    torch.save(state, tmp_path / "model_state.pth")
    norm = {"kind": "per-channel", "mean": [0.0] * 3, "std": [1.0] * 3}
    model = _resnet(normalisation=norm)
    lines = []
    info = models.load_weights(model, str(tmp_path / "model_state.pth"), log=lines.append)
    assert info == {"weights": str(tmp_path / "model_state.pth"), "format": "state_dict",
                    "loaded_tensors": len(state), "replaced_head": None}
    assert _same_outputs(user_model, model) and "loaded" in lines[-1]


def test_safetensors_accepted(tmp_path, small):
    spec, user_model, state = small
    save_file(state, str(tmp_path / "w.safetensors"))
    model = models.build(spec).eval()
    assert models.load_weights(model, str(tmp_path / "w.safetensors"), log=lambda s: None)["format"] == "safetensors"
    assert _same_outputs(user_model, model, (3, 8, 8))


@pytest.mark.parametrize("wrap", [lambda sd: {"state_dict": sd, "epoch": 3},
                                  lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "step": 9},
                                  lambda sd: {f"module.{k}": v for k, v in sd.items()}])
def test_training_loop_wrappers_and_ddp_prefix_accepted(tmp_path, small, wrap):
    spec, user_model, state = small
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    model = models.build(spec).eval()
    models.load_weights(model, str(tmp_path / "ckpt.pth"), log=lambda s: None)
    assert _same_outputs(user_model, model, (3, 8, 8))


def test_replace_head_keeps_the_datasets_classes(tmp_path):
    imagenet = _resnet(num_classes=1000, seed=2)
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    model = _resnet(num_classes=10)
    with pytest.raises(ModelpressError,
                       match=r"fc.weight: checkpoint \(1000, 512\) vs model \(10, 512\).*replace_head: true"):
        models.load_weights(model, str(tmp_path / "imagenet.pth"))
    lines = []
    info = models.load_weights(model, str(tmp_path / "imagenet.pth"), replace_head=True, log=lines.append)
    assert info["replaced_head"] == "fc" and info["loaded_tensors"] == len(imagenet.state_dict()) - 2
    assert model.fc.weight.shape == (10, 512) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert "replace_head: fc stays" in lines[0] and "fc.weight" in lines[0]


def test_wrong_keys_are_named(tmp_path, trained):
    _, state = trained
    renamed = {k.replace("layer1", "stage1"): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "other.pth")
    with pytest.raises(ModelpressError, match=r"do not fit this model: missing \d+: layer1\.0\.conv1\.weight.*"
                                              r"unexpected \d+: stage1\.0\.conv1\.weight.*architecture and model_args"):
        models.load_weights(_resnet(), str(tmp_path / "other.pth"))


def test_wrong_shapes_are_named(tmp_path):
    grey = _resnet(channels=1)
    torch.save(grey.state_dict(), tmp_path / "grey.pth")
    with pytest.raises(ModelpressError, match=r"shape mismatches 1: conv1.weight: checkpoint \(64, 1, 7, 7\) "
                                              r"vs model \(64, 3, 7, 7\)"):
        models.load_weights(_resnet(), str(tmp_path / "grey.pth"))


def test_a_pickled_whole_model_is_refused_with_the_conversion(tmp_path, trained):
    user_model, _ = trained
    torch.save(user_model, tmp_path / "model.pt")
    with pytest.raises(ModelpressError, match=r"(?s)whole pickled model \(it holds a pickled torchvision.models.resnet."
                                              r"ResNet\).*weights_only=False.*torch.save\(model.state_dict\(\)"):
        models.load_weights(_resnet(), str(tmp_path / "model.pt"))


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a torch checkpoint or a safetensors file"),
    (None, "no such file"),
])
def test_unreadable_weights_are_explained(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelpressError, match=message):
        models.load_weights(_resnet(), str(path))


def test_non_tensor_entries_are_explained(tmp_path, small):
    _, _, state = small
    torch.save({**state, "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ModelpressError, match=r"mixes tensors with other entries \['epoch'\].*state_dict"):
        models.load_weights(_resnet(), str(tmp_path / "mixed.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelpressError, match="holds list, not a state dict"):
        models.load_weights(_resnet(), str(tmp_path / "list.pth"))


@pytest.mark.parametrize("arch, shape, expected", [
    ("mlp", [6], "7"),
    ("cnn", [1, 8, 8], "classifier"),
    ("torchvision:mobilenet_v3_small", [3, 32, 32], "classifier.3"),
    ("torchvision:squeezenet1_1", [3, 64, 64], "classifier.1"),
    ("timm:resnet10t", [3, 32, 32], "fc"),
])
def test_head_is_the_output_layer(arch, shape, expected):
    name, layer = models.head(models.build(models.make_spec(arch, shape, 7)))
    assert name == expected
    assert (layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels) == 7


def test_an_rgb_checkpoint_for_grey_data_names_the_channels_setting(tmp_path, trained):
    _, state = trained
    torch.save(state, tmp_path / "rgb.pth")
    with pytest.raises(ModelpressError, match=r"conv1.weight: checkpoint \(64, 3, 7, 7\) vs model \(64, 1, 7, 7\)"
                                              r".*set channels: 3"):
        models.load_weights(_resnet(channels=1), str(tmp_path / "rgb.pth"), log=lambda s: None)
