"""Packed GGML weights as tinygrad linear layers: block formats (`formats`) and the layer (`linear`)."""
from edgegen.runtime.quant.linear import BLOCK, PackedLinear, embedding_rows, pack_layer, pack_linear

__all__ = ["BLOCK", "PackedLinear", "embedding_rows", "pack_layer", "pack_linear"]
