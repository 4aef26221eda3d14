"""The U-Net's and the classifier's weights from their GGUF files: matrices packed on the device, vectors in float.

A convolution dequantizes its kernel once per call into a temporary buffer and then runs an ordinary float
convolution: dequantization fused into the convolution is redone for every output position (docs/TINYGRAD.md,
docs/MEASUREMENTS.md). Linear layers use `PackedLinear` as in the Llama.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from tinygrad import Tensor

from edgegen.models.unet import GROUP_NORM_EPS, attention, norm_silu_conv
from edgegen.runtime.artifact.config import config_from_file
from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.quant import PackedLinear, pack_linear

# The shipped weights are package data of edgegen.models, found the same way in a wheel and in an editable install.
WEIGHTS_DIR = Path(str(importlib.resources.files("edgegen.models") / "weights"))
DEFAULT_UNET = WEIGHTS_DIR / "unet-mnist.gguf"
LATENT_UNET = WEIGHTS_DIR / "latent-mnist.gguf"
DEFAULT_CLASSIFIER = WEIGHTS_DIR / "mnist-classifier.gguf"
# The shipped diffusion models by name (`edgegen diffuse --model NAME`): pixel space, and a U-Net over the latents
# of a tiny autoencoder carried in the same file.
SHIPPED_MODELS = {"mnist": DEFAULT_UNET, "mnist-latent": LATENT_UNET}


def model_path(name_or_path: str | Path | None) -> Path:
    """A shipped model's file by name, else the path as given (None: the default pixel model)."""
    if name_or_path is None:
        return DEFAULT_UNET
    name = str(name_or_path)
    if name in SHIPPED_MODELS:
        return SHIPPED_MODELS[name]
    path = Path(name_or_path)
    if not path.exists() and not path.suffix and "/" not in name:  # a name, not a path
        raise ArtifactError(f"unknown diffusion model {name!r}: a shipped model's name "
                            f"({', '.join(SHIPPED_MODELS)}) or a U-Net GGUF file")
    return path


__all__ = ["DEFAULT_CLASSIFIER", "DEFAULT_UNET", "LATENT_UNET", "SHIPPED_MODELS", "WEIGHTS_DIR", "PackedConvWeights",
           "config_from_file", "model_path"]


class PackedConvWeights:
    """A `UNetWeights` source over a GGUF file: matrices packed on the device, vectors as float tensors.

    native_parts: convolutions through the hand-written CPU kernel (runtime.native.conv) split into this many
    partitions; None: tinygrad's own convolution (every backend)."""

    def __init__(self, mf: ModelFile, device: str | None = None, native_parts: int | None = None):
        self.native_parts = native_parts
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

    def conv(self, name: str, x: Tensor, k: int, stride: int = 1, padding: int = 0, padded: bool = False) -> Tensor:
        """padded (the native kernels only): x is zero-padded by `padding` already."""
        layer = self._layer(name)
        w = layer.weight()
        if layer.ggml_type != T.F32:
            w = w.contiguous()  # dequantize once per call, not once per output position
        if self.native_parts is not None:
            from edgegen.runtime.native.conv import conv2d

            return conv2d(x, w, self.vectors.get(f"{name}.bias"), k, stride, padding, self.native_parts, padded)
        w = w.reshape(layer.out_features, layer.in_features // (k * k), k, k)
        return x.conv2d(w, self.vectors.get(f"{name}.bias"), stride=stride, padding=padding)

    def norm_silu_conv(self, norm: str, conv: str, x: Tensor, k: int, groups: int) -> Tensor:
        if self.native_parts is None:
            return norm_silu_conv(self, norm, conv, x, k, groups)
        from edgegen.runtime.native.unet_kernels import group_norm_silu_padded

        xp = group_norm_silu_padded(x, self.vector(f"{norm}.weight"), self.vector(f"{norm}.bias"), groups, k // 2,
                                    GROUP_NORM_EPS, self.native_parts)
        return self.conv(conv, xp, k, padding=k // 2, padded=True)

    def attention(self, qkv: Tensor, heads: int) -> Tensor:
        if self.native_parts is None:
            return attention(qkv, heads)
        from edgegen.runtime.native.unet_kernels import self_attention

        return self_attention(qkv, heads, self.native_parts)

    def linear(self, name: str, x: Tensor) -> Tensor:
        y = self._layer(name)(x)
        bias = self.vectors.get(f"{name}.bias")
        return y if bias is None else y + bias

    def vector(self, name: str) -> Tensor:
        if name not in self.vectors:
            raise ArtifactError(f"the model file has no tensor {name}")
        return self.vectors[name]
