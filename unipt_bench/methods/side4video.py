"""Side4Video (Yao et al., 2023, arXiv 2311.15769): a spatial-temporal side network over frozen CLIP frames.

A narrow network of width s runs beside the frozen CLIP vision tower: its own 3D-convolution stem reads
the frames, and after every backbone layer it averages in that layer's tokens (projected to s), then
applies a temporal depthwise convolution, attention over the frame's tokens (with a CLS token shifted
between neighbouring frames) and an MLP. Its pooled output joins each frame's CLS token of the last
layer. The backbone runs under no_grad: gradients reach only the side network. A text tower is fine-tuned
fully, as the official retrieval code trains it. docs/methods.md §Side4Video. Official code:
github.com/HJYao00/Side4Video (commit 5d72352), cited below as Retrieval/<file>:<line>.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.base import Backbone, BackboneOutput
from ..configurable import bounded
from .base import Method, SideTuned, linear_params, norm_params, register_method

HEAD_WIDTH = 64  # attention heads = s // 64 (Retrieval/modules/module_clip.py:289)
MLP_RATIO = 4  # (Retrieval/modules/module_clip.py:271, 287)


def to_grid(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Patch tokens [B*T, P, s] -> a video volume [B, s, T, g, g] (rows ordered video by video, P = g * g)."""
    bt, p, s = x.shape
    g = round(p ** 0.5)
    return x.view(bt // frames, frames, g, g, s).permute(0, 4, 1, 2, 3)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A video volume [B, s, T, g, g] -> patch tokens [B*T, g*g, s]."""
    b, s, t, g, _ = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * t, g * g, s)


def shift_token(token: torch.Tensor, frames: int) -> torch.Tensor:
    """Each frame's CLS token [B*T, 1, s]: its first s/2 channels from the next frame, the rest from the
    previous one, zeros past either end (Retrieval/modules/module_clip.py:326-334)."""
    x = token.view(-1, frames, token.shape[-1])  # [B, T, s]
    fold = x.shape[-1] // 2
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:] = x[:, :-1, fold:]
    return out.view_as(token)


class SideBlock(nn.Module):
    """One side layer (AttnCBlock with kernel_size=1: Retrieval/modules/module_clip.py:270-357, built at :440):
    x += PW2 DW_t PW1 BN(x) over the volume; x += MHSA(LN([shift(cls); x] + pos))[patches]; x += MLP(BN(x))."""

    def __init__(self, s: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm3d(s), nn.BatchNorm3d(s)
        self.pw_conv1, self.pw_conv2 = nn.Conv3d(s, s, 1), nn.Conv3d(s, s, 1)
        self.dw_conv1 = nn.Conv3d(s, s, (3, 1, 1), padding=(1, 0, 0), groups=s)  # temporal, per channel (:43-44)
        self.attn = nn.MultiheadAttention(s, s // HEAD_WIDTH, batch_first=True)
        self.ln_1 = nn.LayerNorm(s)
        self.mlp = nn.Sequential(nn.Linear(s, MLP_RATIO * s), nn.GELU(), nn.Linear(MLP_RATIO * s, s))
        # the official initialisation (:292-311): normal weights, BatchNorm and LayerNorm at identity
        nn.init.normal_(self.mlp[0].weight, std=(2 * s) ** -0.5)
        nn.init.normal_(self.mlp[2].weight, std=s ** -0.5 * 24 ** -0.5)
        nn.init.normal_(self.pw_conv1.weight, std=0.02)
        nn.init.normal_(self.pw_conv2.weight, std=0.02)
        nn.init.normal_(self.dw_conv1.weight, std=s ** -0.5)
        nn.init.normal_(self.attn.in_proj_weight, std=s ** -0.5)
        nn.init.normal_(self.attn.out_proj.weight, std=s ** -0.5 * 24 ** -0.5)

    def forward(self, x: torch.Tensor, token: torch.Tensor, position: torch.Tensor, frames: int) -> torch.Tensor:
        """x: patch tokens [B*T, P, s]; token: the layer's projected CLS [B*T, 1, s]; position [P+1, s]."""
        grid = to_grid(x, frames)  # [B, s, T, g, g]
        x = to_tokens(grid + self.pw_conv2(self.dw_conv1(self.pw_conv1(self.norm1(grid)))))
        xt = torch.cat([shift_token(token, frames), x], dim=1) + position  # [B*T, P+1, s]
        xt = self.ln_1(xt)
        x = x + self.attn(xt, xt, xt, need_weights=False)[0][:, 1:]
        return x + self.mlp(to_tokens(self.norm2(to_grid(x, frames))))


class SideNetwork(nn.Module):
    """Stem over the pixels, one SideBlock per backbone layer fed by that layer's tokens, and the projection
    of the pooled side features onto each frame's last CLS token (Retrieval/modules/module_clip.py:451-542)."""

    def __init__(self, width: int, layers: int, s: int, patch: int, patches: int) -> None:
        super().__init__()
        # stem: Conv3d(3 -> s, 3 x p x p, stride 1 x p x p, padding 1 x 0 x 0), BatchNorm3d (:40-41, 496-499)
        self.stem = nn.Conv3d(3, s, (3, patch, patch), (1, patch, patch), (1, 0, 0))
        self.stem_norm = nn.BatchNorm3d(s)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))  # side_lns (:442)
        self.downs = nn.ModuleList(nn.Linear(width, s) for _ in range(layers))  # side_linears (:441)
        self.blocks = nn.ModuleList(SideBlock(s) for _ in range(layers))  # every layer: mode 'all' (:427-429)
        self.position = nn.Parameter(torch.empty(patches + 1, s))
        nn.init.normal_(self.position, std=0.01)  # (:448-449)
        self.post_norm = nn.BatchNorm3d(s)  # side_post_bn (:495)
        self.proj = nn.Parameter(torch.zeros(s, width))  # side_proj, zero: the output starts as the backbone's (:494)

    def forward(self, out: BackboneOutput, pixels: torch.Tensor) -> BackboneOutput:
        """pixels [B, T, 3, H, W]; out.hidden h_0..h_L [B*T, 1+P, D]; returns last with CLS += side output."""
        frames = pixels.shape[1]
        x = to_tokens(self.stem_norm(self.stem(pixels.transpose(1, 2))))  # [B*T, P, s]
        for h, norm, down, block in zip(out.hidden[1:], self.norms, self.downs, self.blocks, strict=True):
            y = down(norm(h))  # [B*T, 1+P, s]
            x = block(0.5 * x + 0.5 * y[:, 1:], y[:, :1], self.position, frames)  # (:457-461)
        # mean over each frame's patches (:530-537), as a pooling: its backward hands BatchNorm a dense gradient,
        # where mean's expanded one would make the CPU kernel copy it (a temporary that fake tensors do not show)
        pooled = F.adaptive_avg_pool3d(self.post_norm(to_grid(x, frames)), (frames, 1, 1)).flatten(2)  # [B, s, T]
        side = pooled.transpose(1, 2).reshape(-1, pooled.shape[1]) @ self.proj  # [B*T, D] (:538)
        last = torch.cat([out.last[:, :1] + side[:, None], out.last[:, 1:]], dim=1)  # (:540-542)
        return replace(out, hidden=(out.last,), last=last)


class Side4VideoTuned(SideTuned):
    """SideTuned whose side network also reads the frames' pixels (its own stem)."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        return self.side(self.frozen_states(inputs), inputs["pixel_values"])


@register_method("side4video")
@dataclass
class Side4Video(Method):
    """A side network over a CLIP vision tower's frames; a text tower trains fully (the official retrieval
    script freezes only the vision encoder: Retrieval/script_train/run_train_msrvtt.sh:18, main_task_retrieval.py:214-221)."""

    module_names = ("side",)
    kinds = frozenset({"transformer"})
    side_dim: int = bounded(320, at_least=HEAD_WIDTH)  # s: --side_dim 320 (Retrieval/script_train/run_train_msrvtt.sh:10)

    def refusal(self, backbone: Backbone) -> str:
        reason = super().refusal(backbone)
        if not reason and backbone.modality not in ("video", "text"):
            reason = (f"side4video has a design for video towers (a side network over the frames) and text "
                      f"towers (fine-tuned fully), not for {backbone.modality} towers")
        if not reason and backbone.modality == "video" and not hasattr(backbone.config, "patch_size"):
            reason = "side4video needs a vision transformer over patches (a patch_size in its config)"
        return reason

    def geometry(self, backbone: Backbone) -> tuple[int, int]:
        """(patch size p, patches per frame P = (H / p)^2) of a CLIP vision tower."""
        patch = backbone.config.patch_size
        return patch, (backbone.config.image_size // patch) ** 2

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        if backbone.modality == "text":
            for p in backbone.parameters():
                p.requires_grad_(True)
            return backbone
        patch, patches = self.geometry(backbone)
        side = SideNetwork(backbone.width, backbone.num_layers, self.side_dim, patch, patches)
        return Side4VideoTuned(backbone, side)

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        return backbone.width  # CLS tokens of width D; the task head projects (where CLIP's frozen ln_post and proj follow, :544-546)

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Text: every backbone parameter. Video (docs/methods.md §Side4Video): stem 9 p^2 s + s + BN 2s;
        L (LN(D) + Linear(D -> s) + block); block = 2 BN + 2 PW (s^2 + s) + DW (3s + s) + attention
        4 (s^2 + s) + LN 2s + MLP (4 s^2 + 4s) + (4 s^2 + s); position (P + 1) s; post BN 2s; proj s D."""
        if backbone.modality == "text":
            return sum(p.numel() for p in backbone.parameters())
        s, d = self.side_dim, backbone.width
        patch, patches = self.geometry(backbone)
        block = (2 * norm_params(s) + 2 * linear_params(s, s) + 4 * s + 4 * linear_params(s, s) + norm_params(s)
                 + linear_params(s, MLP_RATIO * s) + linear_params(MLP_RATIO * s, s))
        per_layer = norm_params(d) + linear_params(d, s) + block
        stem = 3 * patch * patch * 3 * s + s + norm_params(s)
        return stem + backbone.num_layers * per_layer + (patches + 1) * s + norm_params(s) + s * d
