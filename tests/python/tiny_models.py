"""The tiny models and fixtures the tests share: a pure-PyTorch cross-attention UNet in miniature (no ComfyUI), the
recorder wired into it, and store metadata. ComfyUI itself and its tiny SD models are in comfy_env.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEADS, DIM, CTX_TOKENS, CTX_DIM = 2, 8, 7, 12


class CrossAttentionLayer(torch.nn.Module):
    """A host's cross-attention block: projections here, attention through a callback."""

    def __init__(self, channels: int, key: str):
        super().__init__()
        self.key = key
        self.to_q = torch.nn.Linear(channels, HEADS * DIM, bias=False)
        self.to_k = torch.nn.Linear(CTX_DIM, HEADS * DIM, bias=False)
        self.to_v = torch.nn.Linear(CTX_DIM, HEADS * DIM, bias=False)
        self.to_out = torch.nn.Linear(HEADS * DIM, channels)

    def forward(self, x, context, attend):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        out = attend(self.to_q(tokens), self.to_k(context), self.to_v(context), self.key, h, w)
        return x + self.to_out(out).transpose(1, 2).reshape(b, c, h, w)


class TinyUNet(torch.nn.Module):
    """Down, middle and up cross-attention at 8x8 / 4x4 / 8x8 tokens, like a miniature SD UNet."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.inp = torch.nn.Conv2d(4, channels, 3, padding=1)
        self.down = CrossAttentionLayer(channels, "input.1.0")
        self.mid = CrossAttentionLayer(channels, "middle.0.0")
        self.up = CrossAttentionLayer(channels, "output.1.0")
        self.out = torch.nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x, context, attend):
        h = self.down(self.inp(x), context, attend)
        m = self.mid(F.avg_pool2d(h, 2), context, attend)
        u = self.up(h + F.interpolate(m, scale_factor=2.0), context, attend)
        return self.out(u)


def sdpa_attend(q, k, v, key, h, w):
    split = lambda t: t.view(t.shape[0], t.shape[1], HEADS, DIM).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[1], HEADS * DIM)


def recorder_attend(recorder, cond_or_uncond):
    def attend(q, k, v, key, h, w):
        return recorder.cross_attention(q, k, v, key, HEADS, cond_or_uncond, h, w)

    return attend


def make(ops, dtype=torch.float32, tokens=(2, 3)):
    torch.manual_seed(0)
    model = TinyUNet().to(dtype)
    layers = {
        "input.1.0": ops.LayerCapture(maps=True),
        "middle.0.0": ops.LayerCapture(maps=True),
        "output.1.0": ops.LayerCapture(maps=True, features=True),
    }
    return model, ops.AttentionRecorder(layers, list(tokens))


def store_metadata(ops, layers, sigmas):
    """Metadata of an SD1 palette or template of these layers and sigmas, for the subject "dog" of "a photo of a dog"."""
    m = ops.GuidanceMetadata()
    m.model_family = "sd1"
    m.layer_keys = list(layers)
    m.sigmas = [float(s) for s in sigmas]
    m.tokens = ops.SubjectTokens("dog", "a photo of a dog", [2, 3])
    m.feature_source = "attn2_query"
    return m
