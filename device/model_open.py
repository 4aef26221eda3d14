"""The `plan` and `bench` front ends' one place to open a model file and ask whether the runtime can run it.

The model-file package (edgegen.runtime.artifact, no tinygrad) owns what a model file is: 'default' (the shipped
model), the errors for a missing, non-GGUF or truncated file, and which architectures and tensor types the runtime
can run.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgegen.device.model_facts import ModelFacts, facts_from_model_file
from edgegen.runtime.artifact.constants import TEXT_ARCHITECTURES
from edgegen.runtime.artifact.reader import open_gguf
from edgegen.runtime.artifact.validate import check_file, runnable_problems


@dataclass(frozen=True)
class OpenedModel:
    """A model file's planner facts, and why the runtime cannot run it (None if it can)."""

    facts: ModelFacts
    cannot_run: str | None
    requantize_fixes: bool  # only the tensor types stop it: `edgegen quantize` can write ones the runtime runs


def open_model_facts(model: str) -> OpenedModel:
    """Facts of `model` (a GGUF path or 'default'); the artifact package's ArtifactError for a file it cannot parse
    or that is malformed (artifact.validate: as `generate` and `info` refuse it). A well-formed file the runtime does
    not run (another architecture, tensor types without kernels) gets its reason in `cannot_run` instead."""
    mf = open_gguf(model)
    check_file(mf)
    facts = facts_from_model_file(mf)
    reason = "; ".join(runnable_problems(mf, TEXT_ARCHITECTURES)) or None  # plan and bench: text generation
    fixable = reason is not None and mf.architecture in TEXT_ARCHITECTURES and bool(mf.tensors)
    return OpenedModel(facts, reason, fixable)
