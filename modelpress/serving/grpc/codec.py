"""Triton's gRPC messages <-> the data plane's objects: pure functions, no server, no I/O.

ModelInferRequest -> `protocol.InferRequest`, with the same checks (and the same messages) as the
HTTP decoder:
- inputs come from `raw_input_contents` (tritonclient's default: one entry per input, in input
  order, little-endian row-major bytes; a BYTES element is a 4-byte little-endian length and its
  bytes) or, when there is none, from each input's typed `contents` (`fp32_contents`,
  `int64_contents`, `bytes_contents`, ...; FP16 has no typed field and travels raw only);
- requested outputs, each output's `classification` parameter (top-k, Triton's extension) and
  the request's `parameters` (`probabilities`, ...) become what the HTTP decoder makes of them;
- BYTES inputs are decoded only for a text model (`bytes_inputs=True`), as over HTTP.

`InferResult` -> ModelInferResponse: every output goes back in `raw_output_contents`, in output
order. Response parameters (a text model's truncation report) become InferParameters: scalars as
themselves, lists as a JSON string (`truncated` = "[0, 2]"), since InferParameter holds no lists.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from modelpress.serving.errors import ClientError
from modelpress.serving.protocol import DATATYPES, InferRequest, bytes_array, datatype_of
from modelpress.serving.text import bytes_tensor_from_binary

# datatype -> the typed contents field that carries it (Triton's mapping; FP16/BF16 have none)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_WIDE = {"int_contents": np.int64, "int64_contents": np.int64, "uint_contents": np.uint64,
         "uint64_contents": np.uint64, "fp32_contents": np.float32, "fp64_contents": np.float64,
         "bool_contents": np.bool_}


# ------------------------------------------------------------------ parameters

def parameter_value(p: pb.InferParameter):
    """An InferParameter as the Python value the HTTP decoder would have read from JSON."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def parameters_dict(params) -> dict:
    return {key: parameter_value(value) for key, value in params.items()}


def set_parameter(p: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, (int, np.integer)):
        p.int64_param = int(value)
    elif isinstance(value, (float, np.floating)):
        p.double_param = float(value)
    elif isinstance(value, str):
        p.string_param = value
    else:  # lists and objects: InferParameter has no such kind, so JSON text
        p.string_param = json.dumps(value)


# ------------------------------------------------------------------ requests

def decode_infer(request: pb.ModelInferRequest, bytes_inputs: bool = False) -> InferRequest:
    """The request's tensors as arrays, checked as protocol.parse_infer checks an HTTP body.
    `bytes_inputs`: the model takes BYTES (text) inputs; otherwise BYTES is refused."""
    if not request.inputs:
        raise ClientError("the request needs at least one input in 'inputs'")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ClientError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one "
                          "per input, in the order of 'inputs', or none and each input's typed contents")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise ClientError(f"inputs[{i}] has no name")
        name, datatype = tensor.name, tensor.datatype
        where = f"input {name!r}"
        text = bytes_inputs and datatype == "BYTES"
        if datatype not in DATATYPES and not text:
            why = ": this model takes no texts" if datatype == "BYTES" else ""
            raise ClientError(f"{where}: unsupported datatype {datatype!r}{why}; use one of {sorted(DATATYPES)}")
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise ClientError(f"{where}: 'shape' must be non-negative integers, got {list(shape)}")
        if raw:
            if tensor.contents.ListFields():
                raise ClientError(f"{where}: give its data in raw_input_contents or in contents, not both")
            array = _from_raw(raw[i], datatype, shape, where, i, text)
        else:
            array = _from_contents(tensor.contents, datatype, shape, where, text)
        if name in inputs:
            raise ClientError(f"input {name!r} is given twice")
        inputs[name] = array
    outputs, classification = None, {}
    if request.outputs:
        outputs = []
        for o in request.outputs:
            if not o.name:
                raise ClientError("every requested output needs a name")
            if o.name in outputs:
                raise ClientError(f"output {o.name!r} is requested twice")
            outputs.append(o.name)
            k = parameters_dict(o.parameters).get("classification")
            if k is not None:
                if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                    raise ClientError(f"output {o.name!r}: 'classification' must be a positive integer "
                                      f"(how many top classes to return), got {k!r}")
                classification[o.name] = k
    return InferRequest(id=request.id or None, inputs=inputs, outputs=outputs, parameters=parameters_dict(
        request.parameters), classification=classification)


def _from_raw(data: bytes, datatype: str, shape: tuple[int, ...], where: str, index: int, text: bool) -> np.ndarray:
    if text:  # elements of their own lengths: the length prefixes must add up
        try:
            return bytes_tensor_from_binary(data, shape, where)
        except ValueError as exc:  # no elements, and dimensions numpy cannot hold
            raise ClientError(f"{where}: shape {list(shape)} is not usable: {exc}") from None
    dtype = DATATYPES[datatype]
    need = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot wrap around
    if len(data) != need:
        raise ClientError(f"{where}: raw_input_contents[{index}] has {len(data)} bytes but shape {list(shape)} of "
                          f"{datatype} needs {need}")
    return _reshape(np.frombuffer(data, dtype=dtype), shape, where)


def _from_contents(contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], where: str,
                   text: bool) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise ClientError(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents")
    given = sorted(f.name for f, _ in contents.ListFields())
    if set(given) - {field}:
        raise ClientError(f"{where}: datatype {datatype} takes contents.{field}, got contents.{', '.join(given)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ClientError(f"{where}: contents.{field} has {len(values)} values but shape {list(shape)} needs {count}"
                          + ("" if given or count == 0 else "; send the data in contents or raw_input_contents"))
    if text:
        return _reshape(bytes_array(list(values), -1), shape, where)
    wide = np.fromiter(values, dtype=_WIDE[field], count=count)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and wide.size and dtype.itemsize < 8:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            bad = wide[(wide < info.min) | (wide > info.max)][0]
            raise ClientError(f"{where}: value {bad} in contents.{field} does not fit {datatype} "
                              f"({info.min} to {info.max})")
    return _reshape(wide.astype(dtype, copy=False), shape, where)


def _reshape(array: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:  # an empty tensor of absurd dimensions ([2**40, 0, 2**40]) has the right size and no shape numpy takes
        return array.reshape(shape)
    except ValueError as exc:
        raise ClientError(f"{where}: shape {list(shape)} is not usable: {exc}") from None


# ------------------------------------------------------------------ responses

def raw_bytes(array: np.ndarray) -> bytes:
    """A tensor's raw contents: little-endian row-major; BYTES as 4-byte length + bytes per element."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in
                        (x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)))
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


def encode_infer(model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray],
                 parameters: dict | None = None) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(raw_bytes(array))
    for key, value in (parameters or {}).items():
        set_parameter(response.parameters[key], value)
    return response


def infer_request(model: str, inputs: dict[str, np.ndarray], version: str = "", request_id: str = "",
                  outputs: list[str] | None = None) -> pb.ModelInferRequest:
    """A raw-contents ModelInferRequest (what tritonclient.grpc sends); used by the load generator."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        request.raw_input_contents.append(raw_bytes(array))
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def metadata_response(doc: dict) -> pb.ModelMetadataResponse:
    """The data plane's model metadata (Triton's JSON layout) as the protobuf; `parameters` have no field."""
    tensor = lambda t: pb.ModelMetadataResponse.TensorMetadata(  # noqa: E731
        name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                                    inputs=[tensor(t) for t in doc["inputs"]],
                                    outputs=[tensor(t) for t in doc["outputs"]])


def statistics_response(doc: dict) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict(doc, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)


def index_response(entries: list[dict], ready_only: bool = False) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries
                                              if not ready_only or e["state"] == "READY"])
