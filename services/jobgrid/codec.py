"""Encoding of bodies: msgpack between nodes and from the Python client, JSON for everyone else."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

MSGPACK = "application/msgpack"
JSON = "application/json"

_mp_enc = msgspec.msgpack.Encoder()
_js_enc = msgspec.json.Encoder()


def encode(obj: Any, fmt: str = JSON) -> bytes:
    return _mp_enc.encode(obj) if fmt == MSGPACK else _js_enc.encode(obj)


def decode(data: bytes, typ: type[T], fmt: str = JSON) -> T:
    if fmt == MSGPACK:
        return msgspec.msgpack.decode(data, type=typ)
    return msgspec.json.decode(data, type=typ)


def describe_error(e: Exception) -> str:
    """A short, field-naming message for a decoding or validation failure."""
    text = str(e)
    if isinstance(e, msgspec.ValidationError):
        return f"invalid request: {text}"
    return f"malformed body: {text}"
