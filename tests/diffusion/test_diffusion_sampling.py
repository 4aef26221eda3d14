"""Sampling: seeds reproduce, the samplers differ as they should, and bad prompts / step counts get clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import assert_clean_error, edgegen

from edgegen.runtime.diffusion import DiffusionParams, ImageGenerator, grid, parse_prompt
from edgegen.runtime.errors import GenerationError


@pytest.mark.parametrize("prompt,digit", [("7", 7), ("seven", 7), (" Seven ", 7), ("a 3", 3), ("digit zero", 0),
                                          ("the number 9", 9), ("EIGHT", 8)])
def test_prompts(prompt, digit):
    assert parse_prompt(prompt) == digit


@pytest.mark.parametrize("prompt", ["", "cat", "12", "-1", "7 8", "seventy", "3.5", "digit"])
def test_bad_prompts(prompt):
    with pytest.raises(GenerationError, match="is not a digit"):
        parse_prompt(prompt)


@pytest.mark.parametrize("kwargs,needle", [
    ({"steps": 0}, "steps must be"), ({"steps": 1001}, "steps must be"), ({"steps": 2.5}, "steps must be"),
    ({"sampler": "euler"}, "sampler must be"), ({"guidance": -1.0}, "guidance must be"),
    ({"seed": -3}, "seed must be"), ({"n": 0}, "n must be"),
])
def test_bad_params(kwargs, needle):
    with pytest.raises(GenerationError, match=needle):
        DiffusionParams(**kwargs).validate()


def test_steps_beyond_the_models_schedule(tiny_unet_files):
    gen = ImageGenerator.load(tiny_unet_files["w8"])  # trained with 100 timesteps
    with pytest.raises(GenerationError, match="from 1 to 100"):
        gen.generate("4", DiffusionParams(steps=101))


@pytest.mark.slow
def test_seeded_sampling_reproduces(tiny_unet_files):
    gen = ImageGenerator.load(tiny_unet_files["w4"])
    a = gen.generate("5", DiffusionParams(steps=4, seed=11, n=2))
    b = gen.generate("five", DiffusionParams(steps=4, seed=11, n=2))
    c = gen.generate("5", DiffusionParams(steps=4, seed=12, n=2))
    assert a.shape == (2, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # DDPM adds fresh noise every step: same seed reproduces, and it differs from DDIM's deterministic path
    d1 = gen.generate("5", DiffusionParams(steps=4, seed=11, n=2, sampler="ddpm"))
    d2 = gen.generate("5", DiffusionParams(steps=4, seed=11, n=2, sampler="ddpm"))
    assert np.array_equal(d1, d2) and not np.array_equal(a, d1)


def test_timesteps_span_the_schedule(tiny_unet_files):
    gen = ImageGenerator.load(tiny_unet_files["w8"])
    ts = gen.timesteps(10)
    assert ts[0] == 99 and ts[-1] == 0 and len(ts) == 10 and np.all(np.diff(ts) < 0)


def test_grid_tiles_images():
    imgs = np.stack([np.full((28, 28), i * 20, np.uint8) for i in range(5)])
    g = grid(imgs, pad=2)
    assert g.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert g[2, 2] == 0 and g[2 + 30, 2 + 30] == 80 and g[-1, -1] == 0


def test_cli_bad_prompt_and_steps(tmp_path, tiny_unet_files):
    model = str(tiny_unet_files["w8"])
    assert_clean_error(edgegen("diffuse", "banana", "--model", model), "'banana' is not a digit")
    assert_clean_error(edgegen("diffuse", "7", "--model", model, "--steps", "0"), "steps must be")
    assert_clean_error(edgegen("diffuse", "7", "--model", model, "--steps", "500"), "from 1 to 100")
    assert_clean_error(edgegen("diffuse", "7", "--model", model, "-o", str(tmp_path / "x.jpg")), "must end in .png")
    assert_clean_error(edgegen("diffuse", "7", "--model", str(tmp_path / "none.gguf")), "not found")
    assert_clean_error(edgegen("diffuse", "7", "--model", "mnist-latnet"),
                       "unknown diffusion model 'mnist-latnet'", "mnist, mnist-latent")
    assert_clean_error(edgegen("diffuse", "7", "--model", model, "--sampler", "euler"), "sampler must be one of")


def test_cli_refuses_a_text_model_for_images(tiny_q4_path):
    assert_clean_error(edgegen("diffuse", "7", "--model", str(tiny_q4_path)), "it is a text model")


def test_cli_eval_errors(tiny_unet_files):
    model = str(tiny_unet_files["w8"])
    assert_clean_error(edgegen("eval", model, "--per-digit", "0"), "--per-digit must be from 1 to 500")
    assert_clean_error(edgegen("eval", model, "--steps", "0"), "steps must be")


def test_frechet_distance_against_closed_forms():
    from edgegen.quantize.evaluate_diffusion import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, means 2 apart along one axis: the distance is the squared mean difference
    assert frechet_distance(a, a + np.array([2.0, 0, 0])) == pytest.approx(4.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 3-D: sum over axes of (1 + 4 - 2 * 2) = 3, up to sampling error
    assert frechet_distance(a, 2 * rng.standard_normal((4000, 3))) == pytest.approx(3.0, rel=0.1)


def test_cli_train_diffusion_errors(tmp_path):
    out = str(tmp_path / "u.gguf")
    assert_clean_error(edgegen("train-diffusion", "--steps", "0", "-o", out), "--steps and --batch must be positive")
    assert_clean_error(edgegen("train-diffusion", "--channels", "32,x,64", "-o", out),
                       "--channels must be three multiples of 32")
    assert_clean_error(edgegen("train-diffusion", "--what", "latent-unet", "-o", out), "needs --autoencoder FILE")
    assert_clean_error(edgegen("train-diffusion", "--guidance", "25", "-o", out), "--guidance must be a number")
    assert_clean_error(edgegen("train-diffusion", "--sampling-steps", "0", "-o", out),
                       "--sampling-steps must be from 1 to 1000")
    assert_clean_error(edgegen("train-diffusion", "--what", "autoencoder", "--trainer", "tinygrad", "-o", out),
                       "trains only with --trainer torch")
    assert_clean_error(edgegen("train-diffusion", "--what", "classifier", "--trainer", "torch", "-o", out),
                       "trains only with --trainer tinygrad")
    assert_clean_error(edgegen("train-diffusion", "--init", str(tmp_path / "none.gguf"), "-o", out), "no such file")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    assert_clean_error(edgegen("train-diffusion", "--init", str(tmp_path / "junk.gguf"), "-o", out),
                       "not a readable GGUF checkpoint")


def test_checkpoints_round_trip_and_refuse_what_is_not_one(tiny_unet_files, tmp_path):
    from edgegen.models.classifier import CLASSIFIER_ARCH
    from edgegen.models.unet import UNET_ARCH
    from edgegen.quantize.mnist import TrainingError
    from edgegen.quantize.training import read_checkpoint, write_checkpoint

    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float32)}
    path = tmp_path / "c.gguf"
    write_checkpoint(path, UNET_ARCH, {"timesteps": 10}, tensors, {"command": "tests", "seed": 0})
    back = read_checkpoint(path, UNET_ARCH)
    assert set(back) == set(tensors) and all(np.array_equal(back[n], tensors[n]) for n in tensors)
    with pytest.raises(TrainingError, match=f"architecture 'edgegen-unet', expected '{CLASSIFIER_ARCH}'"):
        read_checkpoint(path, CLASSIFIER_ARCH)
    with pytest.raises(TrainingError, match=r"tensor \S+ is Q8_0, expected F32 \(a checkpoint written by"):
        read_checkpoint(tiny_unet_files["w8"], UNET_ARCH)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(TrainingError, match="junk.gguf: not a readable GGUF checkpoint"):
        read_checkpoint(tmp_path / "junk.gguf", UNET_ARCH)
