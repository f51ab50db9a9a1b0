"""models: where a network comes from (built-in, torchvision, timm or the user's module), the
torch model artifact (``weights.safetensors`` + ``spec.json``, rebuilt without pickles), a
user's checkpoint into a model, and FLOP counting."""

from modelpress.models.architectures import (InputNormalised, InvertedResidual, MobileNetV2, SmallCNN,
                                             architectures, register, unwrap)
from modelpress.models.artifact import (SPEC_FILE, WEIGHTS_FILE, apply_layer_shapes, build, check_arguments,
                                        count_params, layer_shapes, load_model, make_spec, read_spec, save_model)
from modelpress.models.sources import source_kind, timm_names, torchvision_names
from modelpress.models.weights import head, load_weights, read_state_dict

__all__ = ["InputNormalised", "InvertedResidual", "MobileNetV2", "SmallCNN", "SPEC_FILE", "WEIGHTS_FILE",
           "apply_layer_shapes", "architectures", "build", "check_arguments", "count_params", "head",
           "layer_shapes", "load_model", "load_weights", "make_spec", "read_spec", "read_state_dict", "register",
           "save_model", "source_kind", "timm_names", "torchvision_names", "unwrap"]
