import json

import pytest
import torch

from modelpress import models
from modelpress.core.errors import ModelpressError


@pytest.mark.parametrize("arch, shape, args", [
    ("mlp", [20], {"hidden": [32, 16]}),
    ("cnn", [1, 8, 8], {"channels": [8, 16]}),
    ("mobilenet_v2", [3, 32, 32], {"width_mult": 0.35}),
])
def test_build_save_load_round_trip(tmp_path, arch, shape, args):
    spec = models.make_spec(arch, shape, 5, **args)
    torch.manual_seed(0)
    model = models.build(spec).eval()
    x = torch.randn(3, *shape)
    models.save_model(model, spec, str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["spec.json", "weights.safetensors"]
    loaded, loaded_spec = models.load_model(str(tmp_path / "m"))
    assert loaded_spec["architecture"] == arch
    assert torch.equal(model(x), loaded(x))
    assert model(x).shape == (3, 5)


def test_mobilenet_v2_reference_size():
    # the reference configuration of the compression issue: >= 1 M parameters
    model = models.build(models.make_spec("mobilenet_v2", [1, 32, 32], 10))
    assert 2.0e6 < models.count_params(model) < 2.4e6
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_no_pickles_in_artifact(tmp_path):
    spec = models.make_spec("mlp", [4], 2)
    models.save_model(models.build(spec), spec, str(tmp_path / "m"))
    raw = (tmp_path / "m" / "weights.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8:8 + header_len])  # safetensors: a JSON header, then raw tensors
    assert b"torch._utils" not in raw and b"\x80\x04" not in raw[:16]


def test_spec_weight_mismatch_is_refused(tmp_path):
    spec = models.make_spec("mlp", [10], 3, hidden=[16])
    models.save_model(models.build(spec), spec, str(tmp_path / "m"))
    spec["args"]["hidden"] = [32]
    (tmp_path / "m" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelpressError, match="do not match its spec.json.*weights \\(16, 10\\) vs spec \\(32, 10\\)"):
        models.load_model(str(tmp_path / "m"))


def test_unknown_architecture_lists_choices():
    with pytest.raises(ModelpressError, match="unknown architecture 'resnet9000'.*mlp"):
        models.build(models.make_spec("resnet9000", [4], 2))


def test_image_architecture_on_tabular_data_is_explained():
    with pytest.raises(ModelpressError, match="needs image input.*Use 'mlp'"):
        models.build(models.make_spec("cnn", [13], 2))


def test_layer_shapes_rebuild_a_narrower_model(tmp_path):
    spec = models.make_spec("cnn", [1, 8, 8], 4, channels=[8, 16])
    model = models.build(spec)
    shapes = models.layer_shapes(model)
    # shrink the first stage by hand, as structured pruning would
    shapes["features.0.0"]["out_channels"] = 5
    shapes["features.0.1"]["num_features"] = 5
    shapes["features.1.0"]["in_channels"] = 5
    narrow = models.build({**spec, "layer_shapes": shapes})
    assert narrow.features[0][0].weight.shape == (5, 1, 3, 3)
    assert narrow(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    models.save_model(narrow, {**spec, "layer_shapes": shapes}, str(tmp_path / "n"))
    again, _ = models.load_model(str(tmp_path / "n"))
    assert models.count_params(again) == models.count_params(narrow) < models.count_params(model)


def test_dict_parameters_arrive_as_floats_from_kfp():
    # KFP hands dict parameters over through protobuf Struct: every number is a float
    model = models.build(models.make_spec("cnn", [1, 8, 8], 10.0, channels=[8.0, 16.0]))
    assert model.classifier.out_features == 10


def test_the_normalisation_buffers_carry_the_names_quantisation_keeps_in_fp32():
    from modelpress.export import runtime

    model = models.build(models.make_spec("mlp", [3], 2, normalisation={"kind": "per-feature", "mean": [0, 1, 2],
                                                                       "std": [1, 1, 2]}))
    assert tuple(name for name, _ in model.named_buffers()) == runtime.NORMALISATION_CONSTANTS[:2]
    regression = models.build(models.make_spec("mlp", [3], 1, normalisation={
        "kind": "per-feature", "mean": [0, 1, 2], "std": [1, 1, 2], "target": {"mean": 150.0, "std": 70.0}}))
    assert tuple(name for name, _ in regression.named_buffers()) == runtime.NORMALISATION_CONSTANTS
    x = torch.tensor([[0.0, 1.0, 4.0]])
    assert torch.allclose((x - model.mean) * model.inv_std, torch.tensor([[0.0, 0.0, 1.0]]))
