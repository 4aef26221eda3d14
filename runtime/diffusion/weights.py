"""The U-Net's and the classifier's weights from their GGUF files: matrices packed on the device, vectors in float.

A convolution dequantizes its kernel once per call into a temporary buffer and then runs an ordinary float
convolution: dequantization fused into the convolution is redone for every output position (docs/TINYGRAD.md,
docs/MEASUREMENTS.md). Linear layers use `PackedLinear` as in the Llama.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from tinygrad import Tensor

from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.quant import PackedLinear, pack_linear

# The shipped weights are package data of edgegen.models, found the same way in a wheel and in an editable install.
WEIGHTS_DIR = Path(str(importlib.resources.files("edgegen.models") / "weights"))
DEFAULT_UNET = WEIGHTS_DIR / "unet-mnist.gguf"
DEFAULT_CLASSIFIER = WEIGHTS_DIR / "mnist-classifier.gguf"


class PackedConvWeights:
    """A `UNetWeights` source over a GGUF file: matrices packed on the device, vectors as float tensors."""

    def __init__(self, mf: ModelFile, device: str | None = None):
        self.layers: dict[str, PackedLinear] = {}
        self.vectors: dict[str, Tensor] = {}
        for name, info in mf.tensors.items():
            if len(info.shape) == 2 and name.endswith(".weight"):
                self.layers[name[: -len(".weight")]] = pack_linear(info, device)
            else:  # norm scales, biases and the class table: small, used in float
                arr = np.asarray(info.data)
                if info.ggml_type not in (T.F32, T.F16):
                    arr = dequantize(arr, info.ggml_type)
                values = np.array(arr, dtype=np.float32).reshape(info.shape)
                self.vectors[name] = Tensor(values, device=device).realize()

    def size_bytes(self) -> int:
        return sum(layer.size_bytes for layer in self.layers.values()) + sum(v.nbytes() for v in self.vectors.values())

    def _layer(self, name: str) -> PackedLinear:
        if name not in self.layers:
            raise ArtifactError(f"the model file has no tensor {name}.weight")
        return self.layers[name]

    def conv(self, name: str, x: Tensor, k: int, stride: int = 1, padding: int = 0) -> Tensor:
        layer = self._layer(name)
        w = layer.weight()
        if layer.ggml_type != T.F32:
            w = w.contiguous()  # dequantize once per call, not once per output position
        w = w.reshape(layer.out_features, layer.in_features // (k * k), k, k)
        return x.conv2d(w, self.vectors.get(f"{name}.bias"), stride=stride, padding=padding)

    def linear(self, name: str, x: Tensor) -> Tensor:
        y = self._layer(name)(x)
        bias = self.vectors.get(f"{name}.bias")
        return y if bias is None else y + bias

    def vector(self, name: str) -> Tensor:
        if name not in self.vectors:
            raise ArtifactError(f"the model file has no tensor {name}")
        return self.vectors[name]


def config_from_file(mf: ModelFile, cls: Any, arch: str) -> Any:
    """A frozen config dataclass from `<arch>.<field>` metadata (missing keys keep their defaults)."""
    values = {}
    for f in cls.__dataclass_fields__:
        v = mf.get(f"{arch}.{f}")
        if v is not None:
            values[f] = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)
    try:
        return cls(**values)
    except TypeError as e:
        raise ArtifactError(f"{mf.path.name}: bad {arch} configuration ({e})") from e
