"""Where a network comes from: ``spec["architecture"]`` names one of four sources.

- a built-in name (``mlp``, ``cnn``, ``mobilenet_v2``; see architectures.py);
- ``torchvision:<name>``: a torchvision classification model, ``weights=None``;
- ``timm:<name>``: a timm model, ``pretrained=False``;
- ``package.module:callable``: a class or factory in the user's code, imported from
  ``spec["code_dir"]`` (put at the front of ``sys.path``) or from the installed packages.

Nothing is downloaded: weights come from the user's file (models.weights.load_weights).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from modelpress.core.errors import ModelpressError

TORCHVISION, TIMM, MODULE, BUILTIN = "torchvision", "timm", "module", "builtin"
# weights come from load_weights; a download or hub lookup inside a pipeline step is refused
_DOWNLOAD_ARGS = {TORCHVISION: ("weights", "weights_backbone"), TIMM: ("pretrained", "pretrained_cfg_overlay", "checkpoint_path")}


def source_kind(architecture: str) -> str:
    """"builtin" | "torchvision" | "timm" | "module" (``package.module:callable``)."""
    if architecture.startswith("torchvision:"):
        return TORCHVISION
    if architecture.startswith("timm:"):
        return TIMM
    return MODULE if ":" in architecture else BUILTIN


def _close(name: str, choices) -> str:
    matches = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f"close matches: {matches}" if matches else "no close match"


# ------------------------------------------------------------------- torchvision / timm

_TORCHVISION_OP_SCHEMAS = None  # kept alive: the stand-in definitions of torchvision's C++ ops


def _import_torchvision():
    """``import torchvision``, also where its C++ extension does not match the installed torch.

    torchvision 0.28's import registers fake kernels for ``nms``/``qnms`` without checking that
    its extension loaded (e.g. a CUDA-linked wheel beside CPU torch), and fails. Those ops serve
    detection models only, which are not a model source here, so their schemas are defined as
    stand-ins and the import is retried: the classification models are plain Python.
    """
    global _TORCHVISION_OP_SCHEMAS
    try:
        import torchvision
        return torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _TORCHVISION_OP_SCHEMAS is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _TORCHVISION_OP_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")
    _TORCHVISION_OP_SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OP_SCHEMAS.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision


def _import_timm():
    _import_torchvision()  # timm imports torchvision's feature extraction
    import timm
    return timm


def _refuse_downloads(kind: str, args: dict, key: str) -> None:
    asked = [a for a in _DOWNLOAD_ARGS[kind] if args.get(a)]
    if asked:
        raise ModelpressError(f"{key}: {kind} models are built without downloaded weights, so "
                              f"{asked} cannot be set; give your checkpoint as `weights` instead")


def _image_shape(input_shape, architecture: str) -> list[int]:
    if len(input_shape) != 3:
        raise ModelpressError(f"{architecture} needs image input (channels, height, width); this dataset's "
                              f"feature shape is {list(input_shape)}. Use 'mlp' or your own module for "
                              "tabular data.")
    return list(input_shape)


def torchvision_names() -> list[str]:
    tv = _import_torchvision()
    return tv.models.list_models(module=tv.models)


def _torchvision(name: str, input_shape, num_classes: int, args: dict, key: str) -> nn.Module:
    tv = _import_torchvision()
    classification = tv.models.list_models(module=tv.models)
    if name not in classification:
        other = " (a detection, segmentation or video model: only classification models are a model source)" \
            if name in tv.models.list_models() else ""
        raise ModelpressError(
            f"{key}: torchvision has no classification model {name!r}{other}; "
            f"{_close(name, classification)}. List them with: python -c \"import torchvision; "
            "print(torchvision.models.list_models(module=torchvision.models))\"")
    _refuse_downloads(TORCHVISION, args, key)
    channels = _image_shape(input_shape, f"torchvision:{name}")[0]
    if name in ("googlenet", "inception_v3"):  # their auxiliary heads would change what training returns
        args = {"aux_logits": False, "init_weights": True, **args}
    model = tv.models.get_model(name, weights=None, num_classes=num_classes, **args)
    if channels != 3:
        _replace_first_conv(model, channels)
    return model


def _replace_first_conv(model: nn.Module, channels: int) -> None:
    """The stem convolution takes the dataset's channel count (same kernel, stride, padding, bias)."""
    for qualified, old in model.named_modules():
        if isinstance(old, nn.Conv2d):
            groups = old.groups if channels % old.groups == 0 else 1
            new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                            groups, old.bias is not None, old.padding_mode)
            parent, _, child = qualified.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            return
    raise ModelpressError(f"found no Conv2d to take {channels} input channels in this model")


def timm_names() -> list[str]:
    return _import_timm().list_models()


def _timm(name: str, input_shape, num_classes: int, args: dict, key: str) -> nn.Module:
    timm = _import_timm()
    hub, _ = timm.models.parse_model_name(name)
    if hub:
        raise ModelpressError(f"{key}: timm:{name} would download from {hub}; name a timm architecture "
                              "(e.g. timm:resnet18) and give your checkpoint as `weights`")
    if not timm.is_model(name):
        raise ModelpressError(f"{key}: timm has no model {name!r}; {_close(name, timm.list_models())}. "
                              "List them with: python -c \"import timm; print(timm.list_models())\" "
                              "(a pattern narrows it: timm.list_models('resnet*'))")
    _refuse_downloads(TIMM, args, key)
    channels = _image_shape(input_shape, f"timm:{name}")[0]
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels, **args)


# ------------------------------------------------------------------- the user's module

def user_callable(architecture: str, code_dir: str = "", key: str = "architecture"):
    """The class or factory named ``package.module:callable``; only that module is imported."""
    module_name, _, attr = architecture.rpartition(":")
    if not module_name or not attr:
        raise ModelpressError(f"{key}: {architecture!r} is not package.module:callable "
                              "(e.g. mynets.resnet:build_model)")
    folder = _put_on_path(code_dir)
    module = _import_module(module_name, folder, key)
    if not hasattr(module, attr):
        public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                        and getattr(v, "__module__", None) == module.__name__)
        raise ModelpressError(f"{key}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                              f"{attr!r}; its public callables: {public or 'none'}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ModelpressError(f"{key}: {architecture!r} is a {type(fn).__name__}, not a class or function "
                              "that returns an nn.Module")
    return fn


def _put_on_path(code_dir: str) -> Path | None:
    """code_dir at the front of sys.path; a folder that does not exist is named if the import fails
    (the package may be installed instead, as in a container image)."""
    if not code_dir:
        return None
    folder = Path(code_dir).expanduser().resolve()
    if folder.is_dir():
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.path.insert(0, str(folder))
    return folder


def _import_module(module_name: str, folder: Path | None, key: str):
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    if cached is not None and folder is not None and ((folder / top).is_dir() or (folder / f"{top}.py").is_file()) \
            and not _inside(getattr(cached, "__file__", None), folder):
        # a package of the same name imported from elsewhere (another code_dir): import the one in this code_dir
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    where = ("the installed packages (no code_dir set)" if folder is None else
             f"code_dir {folder} and the installed packages" if folder.is_dir() else
             f"the installed packages; code_dir {folder} is not a folder")
    for attempt in (1, 2):
        try:
            importlib.invalidate_caches()
            return importlib.import_module(module_name)
        except RuntimeError as exc:  # user code that imports torchvision where its extension mismatches
            if attempt == 1 and "torchvision::" in str(exc):
                _import_torchvision()
                continue
            raise ModelpressError(f"{key}: cannot import module {module_name!r} (searched {where}): "
                                  f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 -- any failure of user code is reported, not raised
            raise ModelpressError(f"{key}: cannot import module {module_name!r} (searched {where}): "
                                  f"{type(exc).__name__}: {exc}") from None


def _inside(file: str | None, folder: Path) -> bool:
    return bool(file) and Path(file).resolve().is_relative_to(folder)


def accepted_arguments(fn) -> tuple[list[str], bool]:
    """(keyword parameters, whether it takes **kwargs) of a user callable."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _module(architecture: str, input_shape, num_classes: int, args: dict, code_dir: str,
            key: str, args_key: str) -> nn.Module:
    fn = user_callable(architecture, code_dir, key)
    names, var_kw = accepted_arguments(fn)
    extra = {k: v for k, v in (("num_classes", num_classes), ("input_shape", list(input_shape)))
             if (k in names or var_kw) and k not in args}
    try:
        model = fn(**extra, **args)
    except Exception as exc:  # noqa: BLE001 -- the user's constructor failed: say how
        raise ModelpressError(f"{key} {architecture!r} raised on construction ({args_key} {args}, passed "
                              f"{sorted(extra)}): "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelpressError(f"{key} {architecture!r} returned {type(model).__name__} ({repr(model)[:80]}), "
                              "not a torch.nn.Module; it must be a module class or a function returning one")
    return model


# ------------------------------------------------------------------------------ build

def build_net(architecture: str, input_shape, num_classes: int, args: dict, code_dir: str = "",
              key: str = "architecture", args_key: str = "model_args") -> nn.Module:
    """The bare network (no input normalisation) from a torchvision, timm or user source."""
    kind = source_kind(architecture)
    name = architecture.split(":", 1)[1] if kind in (TORCHVISION, TIMM) else architecture
    if kind == MODULE:
        return _module(architecture, input_shape, num_classes, args, code_dir, key, args_key)
    build_fn = _torchvision if kind == TORCHVISION else _timm
    try:
        return build_fn(name, input_shape, num_classes, args, key)
    except ModelpressError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ModelpressError(f"{args_key} {args} do not fit {key} {architecture!r}: "
                              f"{type(exc).__name__}: {exc}") from None
