"""The physgen networks written again in eager PyTorch, for side-by-side latency only (random weights).

Same layers, widths and conditioning as `physgen.policies.nets`: an MLP denoiser with FiLM, and Diffusion Policy's
ConditionalUnet1D (with PyTorch's own Conv1d / ConvTranspose1d / GroupNorm).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
    angles = scale * t[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, t):
        return self.net(sinusoidal_embedding(t, self.dim))


class MLPDenoiser(nn.Module):
    def __init__(self, chunk_shape, cond_dim, hidden=256, depth=3, time_dim=64):
        super().__init__()
        flat, context = chunk_shape[0] * chunk_shape[1], time_dim + cond_dim
        self.chunk_shape = chunk_shape
        self.time = TimeEncoder(time_dim)
        self.layers = nn.ModuleList([nn.Linear(flat, hidden)] + [nn.Linear(hidden, hidden) for _ in range(depth - 1)])
        self.film = nn.ModuleList([nn.Linear(context, 2 * hidden) for _ in range(depth)])
        self.output = nn.Linear(hidden, flat)

    def forward(self, x, t, cond):
        context = torch.cat([self.time(t), cond], dim=-1)
        h = x.reshape(x.shape[0], -1)
        for layer, film in zip(self.layers, self.film):
            scale, shift = film(context).chunk(2, dim=-1)
            h = nn.functional.mish(layer(h) * (1 + scale) + shift)
        return self.output(h).reshape(x.shape[0], *self.chunk_shape)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, groups):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class ResidualBlock(nn.Module):
    def __init__(self, c_in, c_out, cond_dim, kernel, groups):
        super().__init__()
        self.block0, self.block1 = ConvBlock(c_in, c_out, kernel, groups), ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, cond):
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.block1(self.block0(x) * scale + bias) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, chunk_shape, cond_dim, dims=(256, 512, 1024), time_dim=256, kernel=5, groups=8):
        super().__init__()
        act_dim, context = chunk_shape[1], time_dim + cond_dim
        self.time = TimeEncoder(time_dim)
        pairs = list(zip([act_dim, *dims[:-1]], dims))
        self.down = nn.ModuleList([nn.ModuleList([
            ResidualBlock(c_in, c_out, context, kernel, groups), ResidualBlock(c_out, c_out, context, kernel, groups),
            nn.Conv1d(c_out, c_out, 3, 2, 1) if i < len(pairs) - 1 else nn.Identity()]) for i, (c_in, c_out) in enumerate(pairs)])
        self.mid = nn.ModuleList([ResidualBlock(dims[-1], dims[-1], context, kernel, groups) for _ in range(2)])
        self.up = nn.ModuleList([nn.ModuleList([
            ResidualBlock(2 * c_out, c_in, context, kernel, groups), ResidualBlock(c_in, c_in, context, kernel, groups),
            nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]) for c_in, c_out in reversed(pairs[1:])])
        self.final = nn.Sequential(ConvBlock(dims[0], dims[0], kernel, groups), nn.Conv1d(dims[0], act_dim, 1))

    def forward(self, x, t, cond):
        context = torch.cat([self.time(t), cond], dim=-1)
        x, skips = x.transpose(1, 2), []
        for block_a, block_b, downsample in self.down:
            x = block_b(block_a(x, context), context)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, context)
        for block_a, block_b, upsample in self.up:
            x = upsample(block_b(block_a(torch.cat([x, skips.pop()], dim=1), context), context))
        return self.final(x).transpose(1, 2)
