"""models: the architectures a model is built from, the torch model artifact
(``weights.safetensors`` + ``spec.json``, rebuilt without pickles) and FLOP counting."""

from modelpress.models.architectures import (InputNormalised, InvertedResidual, MobileNetV2, SmallCNN,
                                             architectures, register, unwrap)
from modelpress.models.artifact import (SPEC_FILE, WEIGHTS_FILE, apply_layer_shapes, build, check_arguments,
                                        count_params, layer_shapes, load_model, make_spec, read_spec, save_model)

__all__ = ["InputNormalised", "InvertedResidual", "MobileNetV2", "SmallCNN", "SPEC_FILE", "WEIGHTS_FILE",
           "apply_layer_shapes", "architectures", "build", "check_arguments", "count_params", "layer_shapes",
           "load_model", "make_spec", "read_spec", "register", "save_model", "unwrap"]
