"""edgegen's model file (GGUF): its constants, reader, writer, metadata -> config, tokenizer. Imports no tinygrad.

    from edgegen.runtime.artifact.reader import open_gguf
    mf = open_gguf("model.gguf")        # ModelFile: architecture, metadata, tensors (numpy views of the file)
"""
from edgegen.runtime.artifact.reader import ModelFile, TensorInfo, open_gguf, open_model
from edgegen.runtime.errors import ArtifactError

__all__ = ["ArtifactError", "ModelFile", "TensorInfo", "open_gguf", "open_model"]
