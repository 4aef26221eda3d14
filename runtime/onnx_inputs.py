"""Feeds for an ONNX model from user-given files and shapes: .npy arrays, zeros of a shape, or its static shapes."""
from __future__ import annotations

import numpy as np

from edgegen.runtime.errors import OnnxModelError


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    """NAME=VALUE strings as a dict; OnnxModelError names `flag` for a malformed or repeated name."""
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise OnnxModelError(f"{flag} {v!r} is not NAME=VALUE")
        if name in out:
            raise OnnxModelError(f"{flag} {name!r} is given twice")
        out[name] = rest
    return out


def read_inputs(model, inputs: dict[str, str], shapes: dict[str, str]) -> dict[str, np.ndarray]:
    """Arrays for every model input, from .npy files or zeros of a given shape; OnnxModelError names what is
    missing, including the dynamic dimensions that must be given."""
    feeds: dict[str, np.ndarray] = {}
    for name, path in inputs.items():
        if name not in model.inputs:
            raise OnnxModelError(f"unknown input {name!r}: the model's inputs are {', '.join(model.inputs)}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise OnnxModelError(f"input file {path!r} for {name!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise OnnxModelError(f"input file {path!r} for {name!r} is not a .npy array ({e})") from None
    for name, spec in model.inputs.items():
        if name in feeds:
            continue
        if name in shapes:
            try:
                dims = tuple(int(d) for d in shapes[name].lower().split("x"))
            except ValueError:
                dims = ()
            if not dims or min(dims) < 1:
                raise OnnxModelError(f"--shape {name}={shapes[name]} is not positive dimensions like 1x16")
            feeds[name] = np.zeros(dims, dtype=spec.np_dtype)
        elif spec.dynamic_dims:
            raise OnnxModelError(f"input {name!r} ({spec.describe()}) has dynamic dimensions "
                                 f"{', '.join(map(str, spec.dynamic_dims))} and was not given: pass "
                                 f"--input {name}=FILE.npy or --shape {name}=DIMS")
        else:
            feeds[name] = np.zeros([int(d) for d in spec.shape], dtype=spec.np_dtype)
    unknown = sorted(set(shapes) - set(model.inputs))
    if unknown:
        raise OnnxModelError(f"unknown input {unknown[0]!r} in --shape: the model's inputs are "
                             f"{', '.join(model.inputs)}")
    return feeds
