"""Build a models.llama.Llama from a GGUF ModelFile: the config by artifact.config, packed layers from tensors."""
from __future__ import annotations

import numpy as np
from tinygrad import Tensor, UOp

from edgegen.models.config import LlamaConfig
from edgegen.models.llama import Attention, ConcatLinear, Linear, Llama
from edgegen.runtime.artifact.config import config_from_model_file
from edgegen.runtime.artifact.constants import rope_factors_tensor
from edgegen.runtime.artifact.reader import ModelFile, dequantize_tensor
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.native.linear import NativeLinear
from edgegen.runtime.native.linear import attention as native_attention
from edgegen.runtime.native.linear import on_cpu as native_supported
from edgegen.runtime.native.options import KernelPlan
from edgegen.runtime.quant import PackedLinear, pack_layer

# The name engine and `edgegen info` import; the one path from metadata to config is artifact.config.
config_from_gguf = config_from_model_file


class GGUFWeights:
    """The WeightSource models.llama asks for its parameters: packed linear layers and float norm vectors."""

    def __init__(self, mf: ModelFile, device: str | None = None, plan: KernelPlan | None = None) -> None:
        self.mf, self.device, self.plan = mf, device, plan or KernelPlan()
        self.layers: dict[str, PackedLinear | NativeLinear] = {}
        # the fused attention kernel (models.llama.WeightSource.attention), or tinygrad's
        self.attention: Attention | None = \
            self._native_attention if self.plan.native and native_supported(device) else None

    def _native_attention(self, q: Tensor, cache: Tensor, start_pos: int | UOp, window: int) -> Tensor:
        return native_attention(q, cache, start_pos, window, self.plan.parts)

    def _info(self, name: str):
        if name not in self.mf.tensors:
            raise ArtifactError(f"{self.mf.path.name}: tensor {name} is missing")
        return self.mf.tensors[name]

    def linear(self, name: str, in_features: int, out_features: int) -> Linear:
        return self.linear_group([name], in_features, [out_features])

    def linear_group(self, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """One layer whose output is the named tensors' outputs side by side: rows concatenated when the tensors
        share a type, otherwise separate layers whose outputs are concatenated (mixed-precision files)."""
        infos = [self._info(n) for n in names]
        for info, out in zip(infos, out_features):
            if info.shape != (out, in_features):
                raise ArtifactError(
                    f"{self.mf.path.name}: tensor {info.name} has shape {info.shape}, expected {(out, in_features)}"
                )
        release = self.mf.release_span
        if len({i.ggml_type for i in infos}) == 1:
            layers = [pack_layer(infos, self.device, self.plan, release)]
        else:
            layers = [pack_layer(i, self.device, self.plan, release) for i in infos]
        for layer in layers:
            self.layers[layer.name] = layer
        self.mf.release_pages()  # the packed copy is on the device now; keep RSS to one copy while loading
        if len(layers) == 1:
            return layers[0]
        return ConcatLinear(layers)

    def vector(self, name: str, size: int) -> Tensor:
        info = self._info(name)
        if info.shape != (size,):
            raise ArtifactError(f"{self.mf.path.name}: tensor {name} has shape {info.shape}, expected ({size},)")
        # norms and biases are small: any stored type is widened to float32 on the host (F32 as it is)
        return Tensor(np.array(dequantize_tensor(info), dtype=np.float32), device=self.device).realize()

    def has(self, name: str) -> bool:
        return name in self.mf.tensors


def rope_freq_factors(mf: ModelFile, cfg: LlamaConfig) -> np.ndarray | None:
    """Per-pair RoPE frequency divisors the file carries: Llama 3.x `rope_freqs.weight` (its llama3 scaling, computed
    by the converter); Phi-3's `rope_factors_short` / `_long`, the long ones when the context used exceeds the
    original one (llama.cpp build_rope_factors)."""
    name = rope_factors_tensor(mf.tensors, cfg.max_context, cfg.rope_scaling_original_context)
    if name is None:
        return None
    factors = np.asarray(mf.tensors[name].data, dtype=np.float32).reshape(-1)
    if factors.shape != (cfg.rope_dim // 2,):
        raise ArtifactError(f"{mf.path.name}: tensor {name} has shape {factors.shape}, expected ({cfg.rope_dim // 2},)")
    return factors


def build_llama(mf: ModelFile, device: str | None = None, max_context: int | None = None,
                plan: KernelPlan | None = None) -> tuple[Llama, GGUFWeights]:
    """The model on `device`, its layers and attention run by the kernels `plan` names (default: tinygrad's)."""
    cfg = config_from_model_file(mf, max_context)
    weights = GGUFWeights(mf, device, plan)
    model = Llama(cfg, weights, has_output="output.weight" in mf.tensors, rope_freq_factors=rope_freq_factors(mf, cfg))
    return model, weights
