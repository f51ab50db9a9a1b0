"""Model sources: built-in, torchvision:<name>, timm:<name> and the user's package.module:callable,
each rebuilt from spec.json alone."""

import json
import textwrap

import pytest
import torch

from modelpress import models
from modelpress.core.errors import ModelpressError

USER_CODE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def tabular(num_classes, hidden=16):  # a factory that never asks for input_shape
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module(**kwargs):
    return {"layers": 3}


def broken(num_classes):
    raise ValueError("width must be even")


CONSTANT = 3
'''


@pytest.fixture
def user_code(tmp_path):
    """A package outside the repository, as a user's code would be."""
    folder = tmp_path / "usercode"
    (folder / "mynets").mkdir(parents=True)
    (folder / "mynets" / "__init__.py").write_text("")
    (folder / "mynets" / "small.py").write_text(textwrap.dedent(USER_CODE))
    return str(folder)


def _round_trip(tmp_path, spec, shape):
    torch.manual_seed(0)
    model = models.build(spec).eval()
    x = torch.randn(2, *shape)
    models.save_model(model, spec, str(tmp_path / "m"))
    saved = json.loads((tmp_path / "m" / "spec.json").read_text())
    loaded, loaded_spec = models.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    return model, saved, loaded


@pytest.mark.parametrize("arch, kind", [("mlp", "builtin"), ("torchvision:resnet18", "torchvision"),
                                        ("timm:resnet10t", "timm"), ("mynets.small:TinyNet", "module")])
def test_source_kind(arch, kind):
    assert models.source_kind(arch) == kind


def test_torchvision_round_trip_with_grey_input(tmp_path):
    spec = models.make_spec("torchvision:resnet18", [1, 32, 32], 10)
    model, saved, _ = _round_trip(tmp_path, spec, [1, 32, 32])
    assert saved["architecture"] == "torchvision:resnet18" and "code_dir" not in saved
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert models.head(model)[0] == "fc"


def test_timm_round_trip_with_normalisation(tmp_path):
    norm = {"kind": "per-channel", "mean": [0.5], "std": [0.25]}
    spec = models.make_spec("timm:mobilenetv3_small_050", [1, 32, 32], 4, normalisation=norm)
    model, saved, _ = _round_trip(tmp_path, spec, [1, 32, 32])
    assert saved["normalisation"] == norm
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    name, layer = models.head(model)
    assert name == "classifier" and layer.out_features == 4  # relative to the network inside InputNormalised


def test_timm_resnet10t_runs_on_small_grey_images():
    model = models.build(models.make_spec("timm:resnet10t", [1, 32, 32], 3)).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_user_module_round_trip_from_code_dir(tmp_path, user_code):
    spec = models.make_spec("mynets.small:TinyNet", [3, 8, 8], 5, code_dir=user_code, width=6)
    model, saved, loaded = _round_trip(tmp_path, spec, [3, 8, 8])
    assert saved["code_dir"] == user_code and saved["args"]["width"] == 6
    assert type(loaded).__module__ == "mynets.small" and model.fc.out_features == 5
    models.check_arguments("mynets.small:TinyNet", {"width": 4}, code_dir=user_code)


def test_user_factory_gets_only_what_it_asks_for(user_code):
    model = models.build(models.make_spec("mynets.small:tabular", [7], 3, code_dir=user_code))
    assert model(torch.zeros(2, 7)).shape == (2, 3)


def test_check_arguments_accepts_every_source(user_code):
    models.check_arguments("cnn", {"channels": [8, 16]})
    models.check_arguments("torchvision:mobilenet_v3_small", {"dropout": 0.1})
    models.check_arguments("timm:resnet10t", {}, input_shape=[1, 32, 32])
    models.check_arguments("mynets.small:tabular", {"hidden": 8}, code_dir=user_code)


@pytest.mark.parametrize("arch, message", [
    ("torchvision:resnet81",
     r"torchvision has no classification model 'resnet81'; close matches: \['resnet18'.*list_models"),
    ("torchvision:fasterrcnn_resnet50_fpn", "detection, segmentation or video model"),
    ("timm:resnet81", r"timm has no model 'resnet81'; close matches: \[.*'resnet18'.*timm.list_models"),
    ("timm:hf-hub:timm/resnet18.a1_in1k", "would download"),
    ("nosuchpackage.nets:Net", r"cannot import module 'nosuchpackage.nets'.*ModuleNotFoundError"),
])
def test_unknown_sources_are_explained(arch, message):
    with pytest.raises(ModelpressError, match=message):
        models.check_arguments(arch, {})
    with pytest.raises(ModelpressError, match=message):
        models.build(models.make_spec(arch, [3, 32, 32], 2))


def test_arguments_a_source_does_not_take(user_code):
    with pytest.raises(ModelpressError,
                       match=r"model_args \{'depth': 3\} do not fit architecture 'torchvision:resnet18'"):
        models.check_arguments("torchvision:resnet18", {"depth": 3})
    with pytest.raises(ModelpressError, match="built without downloaded weights.*pretrained"):
        models.check_arguments("timm:resnet10t", {"pretrained": True})
    with pytest.raises(ModelpressError,
                       match=r"student_args \['depth'\] do not fit 'mynets.small:TinyNet', which takes"):
        models.check_arguments("mynets.small:TinyNet", {"depth": 3}, "student_architecture", "student_args",
                               code_dir=user_code)


def test_torchvision_on_tabular_data_is_explained():
    with pytest.raises(ModelpressError, match="needs image input.*feature shape is \\[13\\]"):
        models.build(models.make_spec("torchvision:resnet18", [13], 2))


@pytest.mark.parametrize("callable_name, message", [
    ("Missing", r"module 'mynets.small' \(.*small.py\) has no 'Missing'; its public callables: \['TinyNet', 'broken', "
                r"'not_a_module', 'tabular'\]"),
    ("not_a_module", r"returned dict \(\{'layers': 3\}\), not a torch.nn.Module"),
    ("broken", "raised on construction.*ValueError: width must be even"),
    ("CONSTANT", "is a int, not a class or function"),
])
def test_bad_user_callables_are_explained(user_code, callable_name, message):
    with pytest.raises(ModelpressError, match=message):
        models.build(models.make_spec(f"mynets.small:{callable_name}", [3, 8, 8], 2, code_dir=user_code))


def test_user_module_that_fails_to_import_names_the_code_dir(tmp_path):
    (tmp_path / "badnets.py").write_text("import torch\nraise ImportError('needs the cuda extension')\n")
    with pytest.raises(ModelpressError, match=f"cannot import module 'badnets' \\(searched code_dir {tmp_path}.*"
                                              "ImportError: needs the cuda extension"):
        models.check_arguments("badnets:Net", {}, code_dir=str(tmp_path))
    with pytest.raises(ModelpressError, match="cannot import module 'badnets'.*code_dir .*nowhere is not a folder"):
        models.check_arguments("badnets:Net", {}, code_dir=str(tmp_path / "nowhere"))


def test_pruned_torchvision_resnet_is_rebuilt_from_layer_shapes(tmp_path):
    import torch_pruning as tp

    spec = models.make_spec("torchvision:resnet18", [3, 32, 32], 10)
    torch.manual_seed(0)
    model = models.build(spec).eval()
    example = torch.randn(2, 3, 32, 32)
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    assert model.layer2[0].downsample[0].out_channels == 64  # a BasicBlock's shortcut narrowed with its block
    for m in model.modules():  # non-trivial running statistics, so a mismatch would show in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    pruned_spec = {**spec, "layer_shapes": models.layer_shapes(model)}
    models.save_model(model, pruned_spec, str(tmp_path / "pruned"))
    loaded, _ = models.load_model(str(tmp_path / "pruned"))
    assert models.count_params(loaded) == models.count_params(model) < 11_000_000 / 2
    with torch.no_grad():
        assert torch.equal(model(example), loaded(example))


def test_a_second_code_dir_with_the_same_package_name_is_imported_from_its_own_folder(tmp_path, user_code):
    models.build(models.make_spec("mynets.small:TinyNet", [3, 8, 8], 2, code_dir=user_code))
    other = tmp_path / "other"
    (other / "mynets").mkdir(parents=True)
    (other / "mynets" / "__init__.py").write_text("")
    (other / "mynets" / "small.py").write_text("from torch import nn\n\ndef TinyNet(num_classes):\n"
                                               "    return nn.Linear(4, num_classes)\n")
    model = models.build(models.make_spec("mynets.small:TinyNet", [4], 3, code_dir=str(other)))
    assert isinstance(model, torch.nn.Linear) and model.out_features == 3
