"""edgegen quantize package: import a trained model, quantize it by a named recipe, write one GGUF artifact.

    from edgegen.quantize.source import load_source
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.writer import write_artifact
    source = load_source("model.gguf")                     # or a Hugging Face folder
    result = quantize_model(source, "w4-mix8")
    write_artifact("out.gguf", source, result)
"""
from edgegen.quantize.errors import QuantizeError

__all__ = ["QuantizeError"]
