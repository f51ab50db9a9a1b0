"""The Open Inference Protocol (KServe v2) over HTTP, as Triton speaks it: request parsing
and response encoding, JSON tensors and the binary tensor extension in both directions.

Everything here is pure: bytes in, arrays out (and back). Client mistakes raise
`ClientError` with the HTTP status and a message that names the problem.

BYTES inputs (texts) are decoded only for a model that takes them (`bytes_inputs=True`: a
text model): JSON `data` is a list of strings, the binary extension holds each element as a
4-byte little-endian length and its bytes. They become numpy object arrays of `bytes`, as
tritonclient makes them. A response may carry `parameters` (a text model's truncation report).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from modelpress.serving.errors import ClientError
from modelpress.serving.text import bytes_tensor_from_binary, bytes_tensor_from_json

# v2 datatype -> numpy dtype (little-endian, as the binary extension requires)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {v: k for k, v in DATATYPES.items()}
BINARY_HEADER = "inference-header-content-length"


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OS":  # strings (class labels) travel as BYTES
        return "BYTES"
    return _NAMES[array.dtype.newbyteorder("<")]


def bytes_array(values, shape) -> np.ndarray:
    """A BYTES tensor: a numpy object array of bytes, as tritonclient returns them."""
    out = np.empty(len(values), dtype=object)
    out[:] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    return out.reshape(shape)


def triton_to_v2(data_type: str) -> str:
    """'TYPE_FP32' (model config) -> 'FP32' (protocol)."""
    return data_type[5:] if data_type.startswith("TYPE_") else data_type


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None            # None: every output
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False         # "binary_data_output" on the request
    parameters: dict = field(default_factory=dict)          # the request's "parameters"
    classification: dict[str, int] = field(default_factory=dict)  # output -> top-k (Triton's extension)


def _json(raw: bytes | memoryview) -> dict:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(doc, dict):
        raise ClientError("the request body must be a JSON object with an 'inputs' list")
    return doc


def _shape(tensor: dict, where: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise ClientError(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ClientError(f"{where}: 'parameters' must be a JSON object, got {type(params).__name__}")
    return params


def _unique(inputs: dict, name: str, array: np.ndarray) -> np.ndarray:
    if name in inputs:
        raise ClientError(f"input {name!r} is given twice")
    return array


def parse_infer(body: bytes, header_length: str | None, bytes_inputs: bool = False) -> InferRequest:
    """Parse an infer request body: JSON, or JSON header + binary tensors. `bytes_inputs`: the
    model takes BYTES (text) inputs; otherwise BYTES is refused as an unsupported datatype."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ClientError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ClientError(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes: "
                              "the body is truncated or the header is wrong")
        doc, binary = _json(memoryview(body)[:n]), memoryview(body)[n:]
    else:
        doc, binary = _json(body), memoryview(b"")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ClientError("the request needs a non-empty 'inputs' list")
    params = _params(doc, "the request")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ClientError(f"inputs[{i}] must be an object with a 'name'")
        name = tensor["name"]
        where = f"input {name!r}"
        datatype = tensor.get("datatype")
        text = bytes_inputs and datatype == "BYTES"
        if datatype not in DATATYPES and not text:
            why = ": this model takes no texts" if datatype == "BYTES" else ""
            raise ClientError(f"{where}: unsupported datatype {datatype!r}{why}; use one of {sorted(DATATYPES)}")
        dtype = DATATYPES.get(datatype)
        shape = _shape(tensor, where)
        count = math.prod(shape)  # Python ints: a huge shape must not wrap around
        size = _params(tensor, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ClientError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ClientError(f"{where}: binary_data_size {size} runs past the end of the body "
                                  f"({len(binary) - offset} bytes left): the binary sizes do not add up")
            if text:  # elements of their own lengths: the length prefixes must add up to `size`
                array = bytes_tensor_from_binary(binary[offset:offset + size], shape, where)
                offset += size
            elif size != count * dtype.itemsize:
                raise ClientError(f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
                                  f"{datatype} needs {count * dtype.itemsize}")
            else:
                array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
                offset += size
        else:
            if "data" not in tensor:
                raise ClientError(f"{where}: give 'data', or parameters.binary_data_size with binary data")
            if text:
                inputs[name] = _unique(inputs, name, bytes_tensor_from_json(tensor["data"], shape, where))
                continue
            try:
                array = np.asarray(tensor["data"])
                if array.dtype.kind not in "biuf":  # strings, objects, ragged lists
                    raise TypeError
                array = array.astype(dtype)
            except (ValueError, TypeError, OverflowError):
                raise ClientError(f"{where}: 'data' does not hold {datatype} values "
                                  "(a flat or nested list of numbers)") from None
            if array.size != count:
                raise ClientError(f"{where}: 'data' has {array.size} values but shape {list(shape)} needs {count}")
            try:
                array = array.reshape(shape)
            except ValueError as exc:
                raise ClientError(f"{where}: shape {list(shape)} is not usable: {exc}") from None
        inputs[name] = _unique(inputs, name, array)
    if offset != len(binary):
        raise ClientError(f"the body carries {len(binary)} bytes of binary data but the inputs' "
                          f"binary_data_size add up to {offset}: the binary sizes do not add up")
    outputs, binary_outputs, classification = None, set(), {}
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ClientError("'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for o in doc["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ClientError("'outputs' must be a list of {\"name\": ...} objects")
            if o["name"] in outputs:
                raise ClientError(f"output {o['name']!r} is requested twice")
            outputs.append(o["name"])
            o_params = _params(o, f"output {o['name']!r}")
            if o_params.get("binary_data"):
                binary_outputs.add(o["name"])
            k = o_params.get("classification")
            if k is not None:
                if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                    raise ClientError(f"output {o['name']!r}: 'classification' must be a positive integer "
                                      f"(how many top classes to return), got {k!r}")
                classification[o["name"]] = k
    request_id = doc.get("id")
    return InferRequest(id=None if request_id is None else str(request_id), inputs=inputs, outputs=outputs,
                        binary_outputs=binary_outputs, binary_default=bool(params.get("binary_data_output")),
                        parameters=params, classification=classification)


def encode_infer(model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray],
                 binary: set[str], parameters: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """Response body and extra headers; tensors named in `binary` go after the JSON header.
    `parameters`: the response's KServe v2 parameters object (tritonclient's get_response() shows it)."""
    described, blobs = [], []
    for name, array in outputs.items():
        datatype = datatype_of(array)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            if datatype == "BYTES":  # each element: 4-byte little-endian length, then its bytes
                blob = b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
            else:
                blob = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") for v in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    doc = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    header = orjson.dumps(doc)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"inference-header-content-length": str(len(header)),
                                        "content-type": "application/octet-stream"}


def binary_request(inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                   binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer request body (what tritonclient sends); used by the load generator."""
    described, blobs = [], []
    for name, array in inputs.items():
        datatype = datatype_of(array)
        blob = np.ascontiguousarray(array).tobytes()
        described.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                          "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    doc: dict = {"inputs": described, "parameters": {"binary_data_output": binary_output}}
    if outputs:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data": binary_output}} for o in outputs]
    header = orjson.dumps(doc)
    return b"".join([header, *blobs]), {"Inference-Header-Content-Length": str(len(header))}


def json_request(inputs: dict[str, np.ndarray]) -> bytes:
    return orjson.dumps({"inputs": [
        {"name": n, "datatype": datatype_of(a),
         "shape": list(a.shape), "data": a.reshape(-1).tolist()} for n, a in inputs.items()]})


def decode_infer_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Outputs of an infer response (JSON or binary) as arrays; used by the load generator and tests."""
    n = int(header_length) if header_length else len(body)
    doc = orjson.loads(body[:n])
    out, offset = {}, n
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if o["datatype"] == "BYTES":
            if size is not None:
                values, raw, offset = [], body[offset:offset + size], offset + size
                at = 0
                while at < len(raw):
                    (n,) = struct.unpack_from("<I", raw, at)
                    values.append(bytes(raw[at + 4:at + 4 + n]))
                    at += 4 + n
            else:
                values = o["data"]
            out[o["name"]] = bytes_array(values, o["shape"])
            continue
        dtype = DATATYPES[o["datatype"]]
        if size is not None:
            out[o["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
        else:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out
