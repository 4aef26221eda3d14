"""Latent models (a U-Net over a tiny autoencoder's latents, one file), batch buckets and the U-Net's graphs on disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusion_helpers import TINY_AE, TINY_LATENT

from edgegen.runtime.diffusion import BATCH_BUCKETS, DiffusionParams, ImageGenerator
from edgegen.runtime.errors import ArtifactError, GenerationError


@pytest.mark.parametrize("variant", ["f32", "w8", "w4"])
def test_latent_model_samples_latents_and_decodes_pixels(tiny_latent_files, variant):
    gen = ImageGenerator.load(tiny_latent_files[variant], jit_cache=False)
    assert gen.latent and gen.autoencoder_cfg == TINY_AE
    images = gen.sample([3, 1], DiffusionParams(steps=3, seed=4))
    assert images.shape == (2, 28, 28) and np.isfinite(images).all()
    assert images.min() >= -1.0 and images.max() <= 1.0
    z = gen.encode(images[:, None])
    assert z.shape == (2, TINY_LATENT.in_channels, 8, 8)


def test_latent_decoder_matches_numpy(tiny_latent_files):
    """The decoder in tinygrad against a numpy model of the same convolutions, ReLUs and upsampling."""
    from edgegen.models.autoencoder import decoder_layers
    from edgegen.models.unet import UNET_ARCH
    from edgegen.quantize.training import read_checkpoint

    w = read_checkpoint(tiny_latent_files["f32"], UNET_ARCH)
    gen = ImageGenerator.load(tiny_latent_files["f32"], jit_cache=False)
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)

    def conv3(x, name):
        k = w[f"{name}.weight"].reshape(w[f"{name}.weight"].shape[0], -1, 3, 3)
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = np.stack([p[:, :, i:i + x.shape[2], j:j + x.shape[3]] for i in range(3) for j in range(3)], 2)
        return np.einsum("bckhw,ock->bohw", cols, k.reshape(k.shape[0], k.shape[1], 9)) + \
            w[f"{name}.bias"][None, :, None, None]

    h = z
    layers = decoder_layers(TINY_AE)
    for i, (name, _, _, up) in enumerate(layers):
        if up:
            h = h.repeat(2, axis=2).repeat(2, axis=3)
        h = conv3(h, name)
        if i + 1 < len(layers):
            h = np.maximum(h, 0)
    ref = np.clip(h[:, :, 2:30, 2:30], -1, 1)
    np.testing.assert_allclose(gen.decode(z), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_a_latent_file_whose_unet_does_not_take_its_latents_is_refused(tmp_path, tiny_latent_files):
    from dataclasses import asdict, replace

    from edgegen.models.autoencoder import AUTOENCODER_PREFIX
    from edgegen.models.unet import UNET_ARCH
    from edgegen.quantize.training import read_checkpoint, write_checkpoint

    path = tmp_path / "mismatch.gguf"
    other = asdict(replace(TINY_AE, latent_channels=2))
    write_checkpoint(path, UNET_ARCH, asdict(TINY_LATENT), read_checkpoint(tiny_latent_files["f32"], UNET_ARCH),
                     {"command": "tests"}, extra={f"{AUTOENCODER_PREFIX}.{k}": v for k, v in other.items()})
    with pytest.raises(ArtifactError, match="the U-Net takes .4, 8. inputs but the autoencoder makes .2, 8. latents"):
        ImageGenerator.load(path, jit_cache=False)


def test_a_pixel_model_has_no_encoder(tiny_unet_files):
    gen = ImageGenerator.load(tiny_unet_files["f32"], jit_cache=False)
    assert not gen.latent
    with pytest.raises(GenerationError, match="pixel-space model"):
        gen.encode(np.zeros((1, 1, 28, 28), np.float32))


def test_batches_are_padded_to_buckets_without_mixing_rows(tiny_unet_files):
    """Three guided images run as a batch of 8 (6 padded up); each equals its own batch-of-one result."""
    gen = ImageGenerator.load(tiny_unet_files["f32"], jit_cache=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    t, y = np.array([5, 50, 99]), np.array([1, 2, 10])
    together = gen.eps(x, t, y)
    alone = np.concatenate([gen.eps(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(3)])
    assert gen.graphs() == {1: "ready", 4: "ready"}  # 3 -> bucket 4, 1 -> bucket 1
    np.testing.assert_allclose(together, alone, atol=1e-4)
    big = rng.standard_normal((BATCH_BUCKETS[-1] + 3, 1, 28, 28)).astype(np.float32)
    n = len(big)
    out = gen.eps(big, np.full(n, 7), np.zeros(n, np.int64))  # chunks of the largest bucket, then a padded rest
    assert out.shape == big.shape and BATCH_BUCKETS[-1] in gen.graphs()


WARM = r"""
import sys, json, numpy as np
from edgegen.runtime.diffusion import DiffusionParams, ImageGenerator
gen = ImageGenerator.load(sys.argv[1])
loaded = [b for b, state in gen.graphs().items() if state == "loaded"]
decoders = [b for b, state in gen.graphs("decode").items() if state == "loaded"]
images = gen.sample([int(d) for d in sys.argv[2].split(",")], DiffusionParams(steps=4, seed=3))
gen.save_graphs()
np.save(sys.argv[3], images)
print(json.dumps({"loaded": loaded, "decoders": decoders}))
"""


def _run(script: str, *args: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("model", ["pixel", "latent"])
def test_graphs_from_disk_give_the_same_images_as_a_cold_capture(tiny_unet_files, tiny_latent_files, tmp_path, model):
    """A fresh process replays the U-Net's graphs saved by the one before, and draws exactly the same images."""
    import json

    path = str((tiny_unet_files if model == "pixel" else tiny_latent_files)["w8"])
    env = {**os.environ, "EDGEGEN_CACHE": str(tmp_path / "cache")}
    cold = json.loads(_run(WARM, path, "7,2", str(tmp_path / "cold.npy"), env=env))
    warm = json.loads(_run(WARM, path, "7,2", str(tmp_path / "warm.npy"), env=env))
    assert cold["loaded"] == [] and warm["loaded"] == [4]  # two guided images: a batch of 4
    assert warm["decoders"] == ([2] if model == "latent" else [])  # the decoder's graph is kept too
    assert np.array_equal(np.load(tmp_path / "cold.npy"), np.load(tmp_path / "warm.npy"))


def test_a_corrupted_graph_on_disk_is_detected_and_recaptured(tiny_unet_files, tmp_path, monkeypatch):
    """A loaded graph whose probe output differs is dropped (and its cache entry removed) before any image uses it."""
    from edgegen.runtime import jit_cache

    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    gen = ImageGenerator.load(tiny_unet_files["f32"])
    ref = gen.sample([5], DiffusionParams(steps=2, seed=0))
    gen.save_graphs()
    assert gen.cache_key is not None
    entry = jit_cache.load(gen.cache_key)
    assert entry is not None and set(entry["probes"]) == {("eps", 2)}
    entry["probes"]["eps", 2] = entry["probes"]["eps", 2] + 1.0  # what a stale or damaged entry would look like
    jit_cache.save(gen.cache_key, entry)
    again = ImageGenerator.load(tiny_unet_files["f32"])
    assert again.graphs() == {2: "loaded"}
    assert np.array_equal(again.sample([5], DiffusionParams(steps=2, seed=0)), ref)
    assert again.graphs() == {2: "ready"} and not list(Path(tmp_path / "cache" / "jit").glob("*.pkl"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pixel", "latent"])
def test_sampling_on_opencl_matches_the_cpu(tiny_unet_files, tiny_latent_files, tmp_path, model):
    path = str((tiny_unet_files if model == "pixel" else tiny_latent_files)["w8"])
    script = WARM.replace("ImageGenerator.load(sys.argv[1])", "ImageGenerator.load(sys.argv[1], device=DEV)")
    outs = {}
    for dev in ("CPU", "CL"):
        env = {**os.environ, "EDGEGEN_CACHE": str(tmp_path / dev), "DEV": dev}
        _run(f"DEV = {dev!r}\n" + script, path, "4", str(tmp_path / f"{dev}.npy"), env=env)
        outs[dev] = np.load(tmp_path / f"{dev}.npy")
    np.testing.assert_allclose(outs["CL"], outs["CPU"], atol=2e-3)


@pytest.mark.parametrize("value,ok", [(3.0, True), (0.0, True), (-1.0, False), (float("nan"), False), (99.0, False)])
def test_a_files_guidance_is_its_default_and_checked(tmp_path, tiny_unet_files, value, ok):
    from dataclasses import asdict

    from diffusion_helpers import TINY

    from edgegen.models.unet import UNET_ARCH
    from edgegen.quantize.training import read_checkpoint, write_checkpoint
    from edgegen.runtime.diffusion import DEFAULT_GUIDANCE

    path = tmp_path / "g.gguf"
    write_checkpoint(path, UNET_ARCH, asdict(TINY), read_checkpoint(tiny_unet_files["f32"], UNET_ARCH),
                     {"command": "tests"}, extra={f"{UNET_ARCH}.guidance": value})
    if not ok:
        with pytest.raises(ArtifactError, match="edgegen-unet.guidance must be a number from 0 to 20"):
            ImageGenerator.load(path, jit_cache=False)
        return
    gen = ImageGenerator.load(path, jit_cache=False)
    assert gen.default_guidance == value
    assert ImageGenerator.load(tiny_unet_files["f32"], jit_cache=False).default_guidance == DEFAULT_GUIDANCE
    # None in the parameters means the file's weight: the same images as asking for it by value
    a = gen.sample([2], DiffusionParams(steps=2, seed=1))
    b = gen.sample([2], DiffusionParams(steps=2, seed=1, guidance=value))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("keys,error", [
    ({"sampler": "ddpm", "steps": 3}, None),
    ({"steps": 3}, None),
    ({"sampler": "euler"}, "edgegen-unet.sampler must be one of ddim, ddpm"),
    ({"steps": 0}, "edgegen-unet.steps must be an integer from 1 to 100"),
    ({"steps": 101}, "edgegen-unet.steps must be an integer from 1 to 100"),
])
def test_a_files_sampler_and_steps_are_its_defaults_and_checked(tmp_path, tiny_unet_files, keys, error):
    from dataclasses import asdict

    from diffusion_helpers import TINY

    from edgegen.models.unet import DEFAULT_SAMPLER, DEFAULT_STEPS, UNET_ARCH, sampling_keys
    from edgegen.quantize.training import read_checkpoint, write_checkpoint

    path = tmp_path / "s.gguf"
    write_checkpoint(path, UNET_ARCH, asdict(TINY), read_checkpoint(tiny_unet_files["f32"], UNET_ARCH),
                     {"command": "tests"}, extra=sampling_keys(**keys))
    if error is not None:
        with pytest.raises(ArtifactError, match=error):
            ImageGenerator.load(path, jit_cache=False)
        return
    gen = ImageGenerator.load(path, jit_cache=False)
    resolved = gen.resolve(DiffusionParams(seed=1))
    assert resolved.sampler == keys.get("sampler", DEFAULT_SAMPLER)
    assert resolved.steps == keys.get("steps", DEFAULT_STEPS)
    # None means the file's own: the same images as asking for them by name; a request's own choice wins
    a = gen.sample([2], DiffusionParams(seed=1))
    b = gen.sample([2], DiffusionParams(seed=1, sampler=resolved.sampler, steps=resolved.steps))
    assert np.array_equal(a, b)
    assert gen.resolve(DiffusionParams(steps=2, sampler="ddim")).steps == 2
    # the file's keys survive quantization
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source
    from edgegen.quantize.writer import write_artifact

    w8 = tmp_path / "s-w8.gguf"
    source = load_source(path)
    write_artifact(w8, source, quantize_model(source, "w8"))
    assert ImageGenerator.load(w8, jit_cache=False).resolve(DiffusionParams()) == resolved.__class__(
        steps=resolved.steps, sampler=resolved.sampler, guidance=resolved.guidance, seed=0)
