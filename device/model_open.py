"""The `plan` and `bench` front ends' one seam to the runtime: open a model file with its parser, ask if it runs.

device's library modules never import runtime (device/__init__.py); its CLI front ends sit on top of both, and
this module is where they meet. The runtime owns what a model file is: 'default' (the shipped model), the errors
for a missing, non-GGUF or truncated file, and which architectures and tensor types it can run.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgegen.device.model_facts import ModelFacts, TensorFacts, facts_from_header


@dataclass(frozen=True)
class OpenedModel:
    """A model file's planner facts, and why the runtime cannot run it (None if it can)."""

    facts: ModelFacts
    cannot_run: str | None
    requantize_fixes: bool  # only the tensor types stop it: `edgegen quantize` can write ones the runtime runs


def open_model_facts(model: str) -> OpenedModel:
    """Facts of `model` (a GGUF path or 'default'); the runtime's ArtifactError for a file it cannot parse."""
    from edgegen.runtime.model_file import TEXT_ARCHITECTURES, open_gguf, runnable_reason

    mf = open_gguf(model)
    tensors = tuple(TensorFacts(t.name, t.n_elements, t.size_bytes, t.ggml_type.name, len(t.shape),
                                t.shape[0] if t.shape else 1)
                    for t in mf.tensors.values())
    facts = facts_from_header(str(mf.path), mf.metadata, tensors)
    reason = runnable_reason(mf, TEXT_ARCHITECTURES)  # plan and bench are about text generation
    return OpenedModel(facts, reason, reason is not None and mf.architecture in TEXT_ARCHITECTURES and bool(tensors))
