"""Open Inference Protocol v2 tensors: JSON and the binary tensor extension. numpy, no torch.

Binary extension (what tritonclient sends by default): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by raw tensors, in input order, each sized by
its `parameters.binary_data_size`. BYTES elements are a 4-byte little-endian length + the bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.protocol import BadRequest

HEADER = "inference-header-content-length"
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class RawRequest:
    header: dict[str, Any]  # the JSON part
    binary: bytes  # the raw tensors after it ("" without the extension)


def split_body(body: bytes, header_length: str | None) -> RawRequest:
    """Separate the JSON header from the binary tensors (400 on a malformed header)."""
    if header_length is None:
        return RawRequest(_json(body), b"")
    if not (header_length.isascii() and header_length.isdigit()):  # int() takes "+1", "1_0"
        raise BadRequest(f"Inference-Header-Content-Length {header_length[:32]!r} is not a "
                         "number of bytes", "Inference-Header-Content-Length")
    n = int(header_length)
    if not 0 < n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {n} does not fit a body of "
                         f"{len(body)} bytes", "Inference-Header-Content-Length")
    return RawRequest(_json(body[:n]), body[n:])


MAX_DEPTH = 32  # JSON nesting a request may have (a TEXT tensor needs 4)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels",
                         "body") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON", "body") from None
    if not isinstance(out, dict):
        raise BadRequest("request body must be a JSON object", "body")
    if depth(out) > MAX_DEPTH:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels", "body")
    return out


def depth(value: Any) -> int:
    """Nesting depth of JSON lists and objects (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d + 1)
            stack.extend((x, d + 1) for x in v)
    return deepest


def decode_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """`count` length-prefixed BYTES elements from `raw` (400 if the buffer disagrees)."""
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise BadRequest(f"{name}: binary BYTES element {i} is missing its length prefix",
                             name)
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"{name}: binary BYTES element {i} says {n} bytes, only "
                             f"{len(raw) - pos} left", name)
        out.append(raw[pos:pos + n])
        pos += n
    if pos != len(raw):
        raise BadRequest(f"{name}: {len(raw) - pos} trailing bytes after {count} elements", name)
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def encode_tensor(datatype: str, values: Any) -> bytes:
    """Raw little-endian bytes of a numeric tensor, or length-prefixed BYTES elements."""
    if datatype == "BYTES":
        return encode_bytes([v if isinstance(v, bytes) else str(v).encode() for v in values])
    return np.asarray(values, dtype=NUMPY[datatype]).astype(
        np.dtype(NUMPY[datatype]).newbyteorder("<")).tobytes()


def flatten(data: Any) -> list[Any]:
    """Row-major flattening of nested JSON lists."""
    if isinstance(data, list):
        out: list[Any] = []
        for x in data:
            out.extend(flatten(x))
        return out
    return [data]


def shape_size(shape: list[int], name: str) -> int:
    size = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise BadRequest(f"{name}.shape: {shape} must hold non-negative integers",
                             f"{name}.shape")
        size *= d
    return size
