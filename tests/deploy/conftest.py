"""Deploy fixtures: a signing key pair (and a second, untrusted one), two tiny text models with different weights."""
from __future__ import annotations

from pathlib import Path

import pytest
from deploy_lib_helpers import FAMILY
from gguf import GGMLQuantizationType as Q
from tiny_arch import random_weights, shape_for, write_gguf

from edgegen.firmware_bridge.deploy import keys


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keys.generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return keys.generate_keypair(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(good, other): the same tiny qwen2 shape with weights from seeds 4 and 5, Q8_0 matrices."""
    d = tmp_path_factory.mktemp("models")
    s = shape_for(FAMILY)
    good, other = d / "good.gguf", d / "other.gguf"
    write_gguf(good, s, random_weights(s, seed=4), Q.Q8_0)
    write_gguf(other, s, random_weights(s, seed=5), Q.Q8_0)
    return good, other
