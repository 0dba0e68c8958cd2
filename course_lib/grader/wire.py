"""What crosses between the checker (trusted) and the student's process (untrusted), and how.

Frames on a pipe: an 8-byte length, a JSON header, then raw buffers. Two directions, two rules:

* **student -> checker: data only.** :func:`decode` never unpickles; it rebuilds ``None``, bools,
  numbers, strings, bytes, lists, tuples, dicts, sets, numpy arrays and torch tensors (from raw
  bytes, with a dtype from a fixed list), and *handles* (numbers naming an object that stays in the
  student's process). Whatever the student's code builds, the checker receives numbers and names.
* **checker -> student: pickles.** The student's process unpickles what the checker sends; that can
  only hurt the student's own process. Callables of the checker travel as *callbacks* (a number);
  calling one in the student's process asks the checker to run it there.
"""
from __future__ import annotations

import json
import os
import select
import struct
import sys
import time

import numpy as np

MAX_FRAME = 4 << 30  # a frame larger than this is a broken or hostile peer
MAX_DEPTH = 40
DTYPES = {
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
}


class WireError(RuntimeError):
    """The peer sent something that is not a frame of this protocol."""


# ------------------------------------------------------------------------------------ framing

def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 22))
        if not b:
            raise EOFError("the other process closed the channel")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def send(fd: int, header: dict, buffers: list[bytes] | tuple = (), deadline: float | None = None) -> None:
    """Write one frame. On a non-blocking ``fd`` (the checker's side) a peer that stops reading cannot
    block the writer past ``deadline`` (``time.monotonic()``): ``TimeoutError``."""
    head = json.dumps(header).encode()
    sizes = [len(b) for b in buffers]
    meta = json.dumps(sizes).encode()
    total = 8 + len(head) + 8 + len(meta) + sum(sizes)
    parts = [struct.pack("<Q", total), struct.pack("<Q", len(head)), head, struct.pack("<Q", len(meta)), meta, *buffers]
    for p in parts:
        view = memoryview(p)
        while view:
            try:
                n = os.write(fd, view[: 1 << 20])
            except BlockingIOError:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the other process stopped reading") from None
                select.select([], [fd], [], left)
                continue
            view = view[n:]


def recv(fd: int) -> tuple[dict, list[bytes]]:
    (total,) = struct.unpack("<Q", _read_exact(fd, 8))
    if total > MAX_FRAME:
        raise WireError(f"frame of {total} bytes")
    body = _read_exact(fd, total)
    try:
        (hl,) = struct.unpack_from("<Q", body, 0)
        header = json.loads(body[8:8 + hl])
        (ml,) = struct.unpack_from("<Q", body, 8 + hl)
        sizes = json.loads(body[16 + hl:16 + hl + ml])
        pos, buffers = 16 + hl + ml, []
        for s in sizes:
            if not isinstance(s, int) or s < 0 or pos + s > len(body):
                raise WireError("bad buffer size")
            buffers.append(body[pos:pos + s])
            pos += s
    except (ValueError, struct.error, TypeError) as e:
        raise WireError(f"unreadable frame: {e}") from None
    if not isinstance(header, dict):
        raise WireError("header is not an object")
    return header, buffers


# ------------------------------------------------------------------- data, student -> checker

def encode(value, buffers: list, handle_of, depth: int = 0, grad_out: list | None = None, cref=None):
    """A JSON-able description of ``value``; arrays go to ``buffers``; anything else becomes a
    handle (``handle_of(obj)`` returns its number). Tensors that carry a gradient graph are listed
    in ``grad_out`` (their index goes in the description). Runs in the student's process."""
    torch = sys.modules.get("torch")  # no tensor can exist where torch was never imported

    def sub(v):
        return encode(v, buffers, handle_of, depth + 1, grad_out, cref)

    if depth > MAX_DEPTH:
        return {"h": handle_of(value), "t": type(value).__name__}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and type(value) is int:
        return value if abs(value) < 2**53 else {"bigint": str(value)}
    if isinstance(value, float) and type(value) is float:
        return {"f": repr(value)}
    if isinstance(value, complex):
        return {"c": [repr(value.real), repr(value.imag)]}
    if isinstance(value, bytes):
        buffers.append(value)
        return {"bytes": len(buffers) - 1}
    if torch is not None and isinstance(value, torch.Tensor) and type(value) in (torch.Tensor, torch.nn.Parameter):
        if cref is not None and not value.requires_grad:
            key = cref(value)
            if key is not None:
                return {"cref": key}
        t = value.detach()
        if t.is_sparse or t.device.type == "meta" or str(t.dtype).replace("torch.", "") not in DTYPES:
            return {"h": handle_of(value), "t": "Tensor"}
        dt = str(t.dtype).replace("torch.", "")
        c = t.cpu().contiguous()
        raw = (c.view(torch.int16) if dt == "bfloat16" else c).numpy().tobytes()
        buffers.append(raw)
        desc = {"tensor": len(buffers) - 1, "dtype": dt, "shape": list(c.shape), "device": value.device.type,
                "grad": bool(value.requires_grad), "param": isinstance(value, torch.nn.Parameter)}
        if value.requires_grad and grad_out is not None:
            grad_out.append(value)
            desc["gout"] = len(grad_out) - 1
        return desc
    if isinstance(value, np.ndarray) and type(value) is np.ndarray:
        if value.dtype.name not in DTYPES:
            return {"h": handle_of(value), "t": "ndarray"}
        buffers.append(np.ascontiguousarray(value).tobytes())
        return {"array": len(buffers) - 1, "dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, np.generic) and value.dtype.name in DTYPES:
        buffers.append(np.asarray(value).tobytes())
        return {"scalar": len(buffers) - 1, "dtype": value.dtype.name}
    if cref is not None and not isinstance(value, np.ndarray):
        key = cref(value)
        if key is not None:
            return {"cref": key}
    if type(value) in (list, tuple, set, frozenset):
        kind = type(value).__name__
        return {kind: [sub(v) for v in value]}
    if type(value) is dict:
        return {"dict": [[sub(k), sub(v)] for k, v in value.items()]}
    if torch is None:
        return {"h": handle_of(value), "t": type(value).__name__, "callable": callable(value), "module": False,
                "isclass": isinstance(value, type)}
    if isinstance(value, torch.Generator) and value.device.type == "cpu":
        buffers.append(value.get_state().numpy().tobytes())
        return {"gen": len(buffers) - 1, "h": handle_of(value)}
    if isinstance(value, torch.dtype):
        return {"torch_dtype": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"torch_device": str(value)}
    return {"h": handle_of(value), "t": type(value).__name__, "callable": callable(value),
            "module": isinstance(value, torch.nn.Module), "isclass": isinstance(value, type)}


def decode(desc, buffers: list[bytes], make_handle, depth: int = 0, leaves: dict | None = None):
    """Rebuild what :func:`encode` described, from data only. Runs in the checker. Tensors the
    student's side listed as carrying a gradient graph go into ``leaves`` by their index."""

    def sub(v):
        return decode(v, buffers, make_handle, depth + 1, leaves)

    if depth > MAX_DEPTH + 2:
        raise WireError("nested too deep")
    if desc is None or isinstance(desc, (bool, str)):
        return desc
    if isinstance(desc, int) and not isinstance(desc, bool):
        return desc
    if not isinstance(desc, dict) or len(desc) == 0:
        raise WireError(f"unexpected description {type(desc).__name__}")

    def buf(i):
        if not isinstance(i, int) or not 0 <= i < len(buffers):
            raise WireError("bad buffer index")
        return buffers[i]

    def shape_of(s):
        if not isinstance(s, list) or not all(isinstance(k, int) and k >= 0 for k in s) or len(s) > 32:
            raise WireError("bad shape")
        return tuple(s)

    def dtype_of(d):
        if d not in DTYPES:
            raise WireError(f"dtype {d!r} not allowed")
        return d

    if "f" in desc:
        return float(desc["f"])
    if "bigint" in desc:
        return int(desc["bigint"])
    if "c" in desc:
        return complex(float(desc["c"][0]), float(desc["c"][1]))
    if "bytes" in desc:
        return bytes(buf(desc["bytes"]))
    if "tensor" in desc:
        import torch

        dt, shape = dtype_of(desc["dtype"]), shape_of(desc["shape"])
        raw = buf(desc["tensor"])
        npdt = "int16" if dt == "bfloat16" else dt
        arr = np.frombuffer(raw, dtype=npdt).copy()
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise WireError("tensor size does not match its shape")
        t = torch.from_numpy(arr.reshape(shape))
        if dt == "bfloat16":
            t = t.view(torch.bfloat16)
        if desc.get("grad") and t.is_floating_point():
            t.requires_grad_(True)
            if leaves is not None and isinstance(desc.get("gout"), int):
                leaves[desc["gout"]] = t
        return t
    if "array" in desc:
        dt, shape = dtype_of(desc["dtype"]), shape_of(desc["shape"])
        if dt == "bfloat16":
            raise WireError("numpy has no bfloat16")
        arr = np.frombuffer(buf(desc["array"]), dtype=dt).copy()
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise WireError("array size does not match its shape")
        return arr.reshape(shape)
    if "scalar" in desc:
        return np.frombuffer(buf(desc["scalar"]), dtype=dtype_of(desc["dtype"]))[0]
    for kind, typ in (("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset)):
        if kind in desc:
            return typ(sub(v) for v in desc[kind])
    if "dict" in desc:
        return {sub(k): sub(v) for k, v in desc["dict"]}
    if "torch_dtype" in desc:
        import torch

        name = desc["torch_dtype"]
        if name not in DTYPES:
            raise WireError("bad dtype")
        return getattr(torch, name)
    if "torch_device" in desc:
        import torch

        return torch.device(str(desc["torch_device"]))
    if "gen" in desc:
        desc = dict(desc, state=bytes(buf(desc["gen"])))
        if not isinstance(desc.get("h"), int):
            raise WireError("bad handle")
        return make_handle(desc)
    if "cref" in desc:
        if not isinstance(desc["cref"], str):
            raise WireError("bad reference")
        return make_handle(desc)
    if "h" in desc:
        if not isinstance(desc["h"], int):
            raise WireError("bad handle")
        return make_handle(desc)
    raise WireError(f"unknown description {sorted(desc)[:3]}")
