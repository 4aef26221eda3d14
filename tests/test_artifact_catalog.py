"""Models found by name, and chunked models joined from their packages (fake chunk packages on sys.path)."""
from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from edgegen.runtime.artifact import catalog
from edgegen.runtime.artifact.reader import resolve_model_path
from edgegen.runtime.errors import ArtifactError


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A model split over two packages as the Gemma chunks are: pkgN/data/<file>.part0K."""
    data = bytes(range(256)) * 4000
    parts = [data[:300_000], data[300_000:700_000], data[700_000:]]
    site = tmp_path / "site"
    layout = {"edgegen_fake_part1": [0, 1], "edgegen_fake_part2": [2]}
    for package, indexes in layout.items():
        folder = site / package / "data"
        folder.mkdir(parents=True)
        (site / package / "__init__.py").write_text("raise ImportError('never imported')\n")
        for i in indexes:
            (folder / f"fake.gguf.part{i:02d}").write_bytes(parts[i])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = catalog.PackagedModel("fake", "fake.gguf", tuple(layout), hashlib.sha256(data).hexdigest(),
                                  install_hint="the test fixture")
    monkeypatch.setitem(catalog.CATALOG, "fake", model)
    monkeypatch.setattr(catalog, "models_dir", lambda: tmp_path / "models")
    return model, data, site


def test_install_joins_the_chunks_in_order(chunked, tmp_path):
    model, data, _ = chunked
    with pytest.raises(ArtifactError, match=r"model 'fake' is not installed .*run the test fixture"):
        catalog.model_path("fake")
    path = catalog.install("fake")
    assert path.read_bytes() == data and catalog.model_path("fake") == path == resolve_model_path("fake")
    assert catalog.install("fake") == path  # idempotent
    assert not list(path.parent.glob(".*.tmp"))


def test_a_corrupt_chunk_is_refused_and_leaves_nothing(chunked, tmp_path):
    model, data, site = chunked
    chunk = site / "edgegen_fake_part1" / "data" / "fake.gguf.part01"
    chunk.write_bytes(b"x" + chunk.read_bytes()[1:])
    with pytest.raises(ArtifactError, match="sha256"):
        catalog.install("fake")
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_missing_package_and_gap_in_chunks(chunked, monkeypatch):
    model, _, site = chunked
    (site / "edgegen_fake_part2" / "data" / "fake.gguf.part02").rename(site / "edgegen_fake_part2" / "data" /
                                                                       "fake.gguf.part03")
    with pytest.raises(ArtifactError, match="are not"):
        catalog.install("fake")
    monkeypatch.setitem(catalog.CATALOG, "fake", catalog.PackagedModel(
        "fake", "fake.gguf", ("edgegen_no_such_package", "edgegen_fake_part2"), model.sha256, "the test fixture"))
    with pytest.raises(ArtifactError, match="package edgegen_no_such_package is not installed"):
        catalog.install("fake")


def test_names_and_paths():
    with pytest.raises(ArtifactError, match="unknown model name 'nope'"):
        catalog.lookup("nope")
    assert resolve_model_path("some/file.gguf").name == "file.gguf"
    assert catalog.CATALOG["smollm2-135m"] is catalog.CATALOG["default"]


def test_command_line(chunked, capsys):
    assert catalog.main(["install", "fake"]) == 0
    assert "fake:" in capsys.readouterr().out
    assert catalog.main(["install", "nope"]) == 2
    assert "unknown model name" in capsys.readouterr().err
    assert catalog.main([]) == 2
    assert sys.modules.get("edgegen_fake_part1") is None  # found, never imported
