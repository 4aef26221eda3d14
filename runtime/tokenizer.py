"""The runtime's tokenizer API: built from GGUF metadata by artifact.tokenizer (the one builder), with streaming
decoders that turn generated ids into text as they arrive."""
from edgegen.runtime.artifact.tokenizer import (
    BPETokenizer,
    SentencePieceTokenizer,
    StreamDecoder,
    TailDecoder,
    Tokenizer,
    _HFStreamDecoder,
    load_tokenizer,
    tokenizer_from_metadata,
)

__all__ = ["BPETokenizer", "SentencePieceTokenizer", "StreamDecoder", "TailDecoder", "Tokenizer", "_HFStreamDecoder",
           "load_tokenizer", "tokenizer_from_metadata"]
