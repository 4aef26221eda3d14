"""An independent numpy forward of models/unet.py's U-Net (float64): the reference the tinygrad model is checked by."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv2d(x, w2d, b, k, stride=1):
    """x (B, C, H, W); w2d (O, C*k*k) as stored; 'same' padding k // 2; im2col by sliding windows."""
    o = w2d.shape[0]
    w = w2d.reshape(o, -1, k, k)
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # (B, C, H', W', k, k)
    return np.einsum("bchwij,ocij->bohw", win, w) + b.reshape(1, o, 1, 1)


def group_norm(x, weight, bias, groups, eps=1e-5):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(b, c, h, w) * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)


def silu(x):
    return x / (1 + np.exp(-x))


def unet_forward(p, cfg, x, t, y):
    """p: name -> float array (dequantized weights); x (B, 1, 28, 28); t, y (B,) ints -> eps (B, 1, 28, 28)."""
    c0, c1, c2 = cfg.channels

    def lin(name, v):
        return v @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def norm(name, v):
        return group_norm(v, p[f"{name}.weight"], p[f"{name}.bias"], cfg.groups)

    def conv(name, v, k, stride=1):
        return conv2d(v, p[f"{name}.weight"], p[f"{name}.bias"], k, stride)

    def res(name, v, emb, cin, cout):
        h = conv(f"{name}.conv1", silu(norm(f"{name}.norm1", v)), 3)
        h = h + lin(f"{name}.emb", emb)[:, :, None, None]
        h = conv(f"{name}.conv2", silu(norm(f"{name}.norm2", h)), 3)
        return (v if cin == cout else conv(f"{name}.skip", v, 1)) + h

    half = cfg.time_freqs // 2
    freqs = np.exp(np.arange(half) * (-np.log(10000.0) / half))
    args = t.astype(np.float64)[:, None] * freqs[None]
    temb = lin("time.fc2", silu(lin("time.fc1", np.concatenate([np.sin(args), np.cos(args)], 1))))
    emb = silu(temb + p["class_emb"][y])
    h0 = res("down0", conv("conv_in", x, 3), emb, c0, c0)
    h1 = res("down1", conv("down0.down", h0, 3, 2), emb, c1, c1)
    h = res("mid.res1", conv("down1.down", h1, 3, 2), emb, c2, c2)
    b, c, hh, ww = h.shape
    a = norm("mid.attn.norm", h).reshape(b, c, hh * ww).transpose(0, 2, 1)
    qkv = lin("mid.attn.qkv", a).reshape(b, hh * ww, 3, cfg.heads, c // cfg.heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv  # (B, heads, HW, d)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    s = np.exp(s - s.max(-1, keepdims=True))
    o = (s / s.sum(-1, keepdims=True)) @ v
    o = lin("mid.attn.out", o.transpose(0, 2, 1, 3).reshape(b, hh * ww, c)).transpose(0, 2, 1).reshape(b, c, hh, ww)
    h = h + o
    def up(v):
        return v.repeat(2, axis=2).repeat(2, axis=3)

    h = res("up1", conv("up1.merge", np.concatenate([up(h), h1], 1), 1), emb, c1, c1)
    h = res("up0", conv("up0.merge", np.concatenate([up(h), h0], 1), 1), emb, c0, c0)
    return conv("conv_out", silu(norm("out.norm", h)), 3)
