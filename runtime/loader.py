"""Build a models.llama.Llama from a GGUF ModelFile: the config from metadata, packed layers from tensors."""
from __future__ import annotations

import numpy as np
from tinygrad import Tensor

from edgegen.models.llama import Linear, Llama, LlamaConfig
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.model_file import ModelFile
from edgegen.runtime.quant import PackedLinear, pack_linear


def config_from_gguf(mf: ModelFile, max_context: int | None = None) -> LlamaConfig:
    """LlamaConfig from `llama.*` keys (gguf-py constants.Keys.LLM / Keys.Attention names)."""
    a = mf.architecture
    n_heads = int(mf.require(f"{a}.attention.head_count"))
    dim = int(mf.require(f"{a}.embedding_length"))
    vocab = mf.get(f"{a}.vocab_size")
    if vocab is None:
        tokens = mf.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else mf.tensors["token_embd.weight"].shape[0]
    file_context = int(mf.get(f"{a}.context_length", 2048))
    context = file_context if max_context is None else int(max_context)
    if context < 1:
        raise ArtifactError(f"context length must be at least 1, got {context}")
    key_length = mf.get(f"{a}.attention.key_length")
    return LlamaConfig(
        dim=dim,
        n_layers=int(mf.require(f"{a}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(mf.get(f"{a}.attention.head_count_kv", n_heads)),
        hidden_dim=int(mf.require(f"{a}.feed_forward_length")),
        vocab_size=int(vocab),
        norm_eps=float(mf.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(mf.get(f"{a}.rope.freq_base", 10000.0)),
        max_context=min(context, file_context),
        head_dim=int(key_length) if key_length else 0,
    )


class GGUFWeights:
    """The WeightSource models.llama asks for its parameters: packed linear layers and float norm vectors."""

    def __init__(self, mf: ModelFile, device: str | None = None) -> None:
        self.mf, self.device = mf, device
        self.layers: dict[str, PackedLinear] = {}

    def _info(self, name: str):
        if name not in self.mf.tensors:
            raise ArtifactError(f"{self.mf.path.name}: tensor {name} is missing")
        return self.mf.tensors[name]

    def linear(self, name: str, in_features: int, out_features: int) -> PackedLinear:
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
        if len({i.ggml_type for i in infos}) == 1:
            layers = [pack_linear(infos, self.device)]
        else:
            layers = [pack_linear(i, self.device) for i in infos]
        for layer in layers:
            self.layers[layer.name] = layer
        self.mf.release_pages()  # the packed copy is on the device now; keep RSS to one copy while loading
        if len(layers) == 1:
            return layers[0]
        return lambda x: Tensor.cat(*[layer(x) for layer in layers], dim=-1)

    def vector(self, name: str, size: int) -> Tensor:
        info = self._info(name)
        if info.shape != (size,):
            raise ArtifactError(f"{self.mf.path.name}: tensor {name} has shape {info.shape}, expected ({size},)")
        return Tensor(np.asarray(info.data, dtype=np.float32).copy(), device=self.device).realize()


def build_llama(mf: ModelFile, device: str | None = None, max_context: int | None = None) -> tuple[Llama, GGUFWeights]:
    cfg = config_from_gguf(mf, max_context)
    weights = GGUFWeights(mf, device)
    model = Llama(cfg, weights, has_output="output.weight" in mf.tensors)
    return model, weights
