"""Sampling parameters as Triton clients send them, typed for vLLM's SamplingParams.

Request parameters (gRPC `parameters=`, HTTP generate's non-input keys) and JSON written by
hand often carry every value as a string ({"temperature": "0", "max_tokens": "16"}). The
official backend converts them by SamplingParams' field types; so does this, with two
differences: "false"/"0" are false (the official backend's bool("false") is true), and list or
dict fields given as JSON text are parsed.
"""

from __future__ import annotations

import json
import types
import typing

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _kinds(annotation) -> set:
    """The plain types an annotation allows: int | None -> {int, NoneType}."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out = set()
        for arg in typing.get_args(annotation):
            out |= _kinds(arg)
        return out
    return {origin or annotation}


def _convert(key: str, value, annotation):
    kinds = _kinds(annotation)
    if not isinstance(value, str) or str in kinds:
        return value
    if bool in kinds:
        lowered = value.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError(f"sampling parameter {key}: {value!r} is not a boolean")
    if int in kinds:
        try:
            return int(value)
        except ValueError:
            if float not in kinds:
                raise ValueError(f"sampling parameter {key}: {value!r} is not an integer") from None
    if float in kinds:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"sampling parameter {key}: {value!r} is not a number") from None
    if kinds & {list, dict, set}:
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(f"sampling parameter {key}: {value!r} is not JSON") from None
    return value


def typed_sampling(sampling: dict) -> dict:
    """`sampling` with string values converted to SamplingParams' field types (vLLM imported
    here: call only in the engine process). Unknown keys pass through: SamplingParams names them."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    hints = typing.get_type_hints(SamplingParams)
    out = {}
    for key, value in sampling.items():
        if key == "structured_outputs" and isinstance(value, (str, dict)):
            value = StructuredOutputsParams(**(json.loads(value) if isinstance(value, str) else value))
        elif key in hints:
            value = _convert(key, value, hints[key])
        out[key] = value
    return out
