"""M2IST (Liu et al., arXiv 2407.01131): multi-modal interactive side-tuning for referring expressions.

M2IST freezes TransVG's vision encoder (ResNet + DETR encoder) and text encoder (BERT) and hangs M3ISA
adapters beside their layers: each adapter reads a layer's attention or feed-forward output and writes
only into a per-branch sum, never back into the encoder, so gradients never enter the frozen encoders.
In layer k, a vision expert (VEA) reads the DETR feed-forward output, a language expert (LEA) the BERT
feed-forward output, and the interactive adapter (MIA) maps both branches' attention outputs down to m
and back up through one up-projection the two branches share. Each branch's sum joins its encoder's
output and input; trainable projections carry both into the vision-language fusion, which trains fully,
as does the box head. Here (MDETR): the joint encoder is the vision branch, the text encoder the language
branch, and the query decoder the fusion. docs/methods.md §M2IST. Official code: github.com/xuyang-liu16/M2IST
(commit bd50919), cited below as <file>:<line>.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import Backbone
from ..backbones.encdec import MDETR, EncDecOutput
from ..backbones.hf import HFEncoder, get_path
from ..configurable import bounded
from .base import Method, freeze, linear_params, norm_params, register_method
from .lst import decoder_layer_params

SCALE = 0.1  # the experts' output scale: adapter_scalar="0.1" (models/adapter.py:44, 111)


def adapter_linear(i: int, o: int) -> nn.Linear:
    """Linear(i -> o) as every adapter projection is initialised: Kaiming-uniform weight (a = sqrt 5), bias
    uniform on [0, 1) (models/adapter.py:25-27, 70-75, 139-144; models/visual_model/transformer.py:212-214;
    models/language_model/med.py:282-286)."""
    linear = nn.Linear(i, o)
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
        nn.init.uniform_(linear.bias)
    return linear


class ExpertAdapter(nn.Module):
    """VEA / LEA: s Up(ReLU(Down(LN(x)))), x [B, N, w] -> [B, N, w] (Adapter_vis / Adapter_text with their
    layer-norm option "in" and dropout 0: models/adapter.py:104-170, 37-102)."""

    def __init__(self, width: int, m: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.down, self.up = adapter_linear(width, m), adapter_linear(m, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SCALE * self.up(torch.relu(self.down(self.norm(x))))


class InteractiveAdapter(nn.Module):
    """MIA of one layer: vision U(ReLU(Dv a)) [B, S, D]; text N(cat[Ut r, U r]), r = ReLU(Dt alpha) [B, T, Dt].

    U (m -> D) is shared by both branches (ShareAdapter: models/trans_vg_lt.py:22-24, models/adapter.py:11-34);
    Dv: models/visual_model/transformer.py:208, 238-240; Dt, Ut: models/language_model/med.py:278-280, 296-302.
    Ut maps to the text width left beside U's, Dt - D (512 = 768 - 256 there); none when Dt = D.
    """

    def __init__(self, width: int, text_width: int, m: int) -> None:
        super().__init__()
        self.shared = adapter_linear(m, width)
        self.down_v = adapter_linear(width, m)
        self.down_t = adapter_linear(text_width, m)
        self.up_t = adapter_linear(m, text_width - width) if text_width > width else None

    def vision(self, a: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.relu(self.down_v(a)))

    def text(self, alpha: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """alpha [B, T, Dt]; `norm` is the text layer's own (frozen) attention-output LayerNorm (med.py:302)."""
        r = torch.relu(self.down_t(alpha))  # [B, T, m]
        up = self.shared(r) if self.up_t is None else torch.cat([self.up_t(r), self.shared(r)], dim=-1)
        return norm(up)


class M3ISA(nn.Module):
    """The side network: per layer k an MIA, a VEA and an LEA; the projections Pv (D -> D) and Pt (Dt -> D)
    into the fusion (visu_proj, text_proj: models/trans_vg_lt.py:38, 44)."""

    def __init__(self, width: int, text_width: int, layers: int, m: int) -> None:
        super().__init__()
        self.mia = nn.ModuleList(InteractiveAdapter(width, text_width, m) for _ in range(layers))
        self.vea = nn.ModuleList(ExpertAdapter(width, m) for _ in range(layers))
        self.lea = nn.ModuleList(ExpertAdapter(text_width, m) for _ in range(layers))
        self.visu_proj = nn.Linear(width, width)
        self.text_proj = nn.Linear(text_width, width)

    def forward(self, taps: dict[str, list[torch.Tensor]], norms: list[tuple[nn.LayerNorm, nn.LayerNorm]],
                encoder: list[torch.Tensor]) -> torch.Tensor:
        """The fusion's memory [B, S, D] (docs/methods.md §M2IST):
        Pv(h_L + h_0 + sum_k [MIA_v(a_k) + VEA(f_k)]) on every token, plus Pt(t_L + e + sum_k [MIA_t(alpha_k)
        + N_k(LEA(phi_k))]) on the text tokens (models/trans_vg_lt.py:62-64, 86-87)."""
        vision = encoder[-1] + encoder[0]
        for mia, vea, a, f in zip(self.mia, self.vea, taps["attn"], taps["ffn"], strict=True):
            vision = vision + mia.vision(a) + vea(f)  # [B, S, D]
        text = taps["text_last"][0] + taps["embeddings"][0]
        for mia, lea, alpha, phi, (attn_norm, ffn_norm) in zip(
                self.mia, self.lea, taps["text_attn"], taps["text_ffn"], norms, strict=True):
            text = text + mia.text(alpha, attn_norm) + ffn_norm(lea(phi))  # [B, T, Dt] (med.py:419-421)
        memory = self.visu_proj(vision)  # [B, S, D]
        words = text.shape[1]
        return torch.cat([memory[:, :-words], memory[:, -words:] + self.text_proj(text)], dim=1)


@contextmanager
def tapped(modules: dict[str, list[nn.Module]]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within: each named list of modules records its outputs, in call order."""
    taps: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: taps[name].append(out))
               for name, group in modules.items() for module in group]
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()


def text_sites(text: HFEncoder, layers: int) -> list[tuple[nn.Module, nn.Module, nn.Module | None, nn.Module | None]]:
    """Per adapted text layer (the first `layers`): the attention output block (its output LN(o + x) is what
    the MIA reads), the feed-forward output projection (the FFN output before dropout and residual, what the
    LEA reads), and the LayerNorms of both sublayers (None where the family has none)."""
    attn_path, ffn_parent = text.layout.attn_out.rpartition(".")[0], text.layout.ffn_out.rpartition(".")[0]
    sites = []
    for layer in text.blocks()[:layers]:
        attn, parent = get_path(layer, attn_path), get_path(layer, ffn_parent)
        sites.append((attn, get_path(layer, text.layout.ffn_out), getattr(attn, "LayerNorm", None),
                      getattr(parent, "LayerNorm", None)))
    return sites


class M2ISTTuned(nn.Module):
    """The frozen encoders run under no_grad (eval mode) with their adapter inputs tapped; the side network
    builds the memory; the decoder (the fusion: trainable) runs on it with gradients."""

    def __init__(self, backbone: MDETR, side: M3ISA) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        for module in self.fusion():
            module.requires_grad_(True)
        self.side = side

    def fusion(self) -> list[nn.Module]:
        """What trains of the backbone: the decoder, its norm and the queries (TransVG's vl_transformer, reg_token
        and vl_pos_embed, outside the frozen encoders: models/trans_vg_lt.py:35-36, 46; train.py:173-198, 217)."""
        return [self.backbone.decoder, self.backbone.decoder_norm, self.backbone.query_embed]

    def train(self, mode: bool = True) -> M2ISTTuned:
        super().train(mode)
        self.backbone.eval()
        for module in self.fusion():
            module.train(mode)
        return self

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncDecOutput:
        bb = self.backbone
        sites = text_sites(bb.text, len(bb.encoder))
        modules = {
            "attn": [layer.self_attn for layer in bb.encoder], "ffn": [layer.ffn for layer in bb.encoder],
            "text_attn": [s[0] for s in sites], "text_ffn": [s[1] for s in sites],
            "embeddings": [bb.text.model.embeddings], "text_last": [bb.text],
        }
        with torch.no_grad(), tapped(modules) as taps:
            encoder, pos, mask = bb.encode(inputs)  # h_0..h_L [B, S, D]
        taps["text_last"] = [taps["text_last"][0].last]  # t_L [B, T, Dt]
        memory = self.side(taps, [(s[2], s[3]) for s in sites], encoder)  # [B, S, D]
        predictions = tuple(bb.decode(memory, pos, mask)[1:])  # [B, Q, D] per decoder layer
        return EncDecOutput(hidden=(memory,), last=predictions[-1], mask=None, memory_mask=mask,
                            predictions=predictions)


@register_method("m2ist")
@dataclass
class M2IST(Method):
    """TransVG's design on MDETR: the joint encoder takes the vision branch's adapters (the DETR encoder's in
    TransVG), the first L text layers the language branch's (L = 6 of BERT's 12 there: med.py:513-518)."""

    module_names = ("side",)
    kinds = frozenset({"encdec"})
    side = False  # the encoders run under no_grad, but the decoder (part of the backbone) trains with gradients
    bottleneck: int = bounded(128, at_least=1)  # m: Linear(256, 128), Linear(768, 128), ShareAdapter(d_model=128),
    # bottleneck=128 (models/visual_model/transformer.py:208, 372; models/language_model/med.py:278;
    # models/trans_vg_lt.py:23; models/language_model/bert_lt.py:41)

    def refusal(self, backbone: Backbone) -> str:
        reason = super().refusal(backbone)
        if reason:
            return (reason + "; m2ist is a side-tuning design for referring-expression grounding on a vision "
                    "encoder and a text encoder feeding a fusion module (TransVG)")
        text = backbone.text
        if not isinstance(text, HFEncoder) or any(s[2] is None or s[3] is None for s in text_sites(text, 1)):
            return "m2ist needs a BERT-family text encoder (post-norm layers: each sublayer ends in a LayerNorm)"
        if text.num_layers < len(backbone.encoder):
            return (f"m2ist adapts as many text layers as joint encoder layers ({len(backbone.encoder)}); "
                    f"the text encoder has {text.num_layers}")
        if text.width < backbone.width:
            return (f"m2ist's text MIA concatenates the shared up-projection (width {backbone.width}) with a text "
                    f"one to the text width; the text width {text.width} is narrower")
        return ""

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        side = M3ISA(backbone.width, backbone.text.width, len(backbone.encoder), self.bottleneck)
        return M2ISTTuned(backbone, side)

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Per adapted layer (L of them): MIA Dv (D m + m) + Dt (Dt m + m) + U (m D + D) + Ut (m (Dt - D) +
        Dt - D); VEA 2D + (D m + m) + (m D + D); LEA 2Dt + (Dt m + m) + (m Dt + Dt). Then Pv (D^2 + D),
        Pt (Dt D + D), and the fusion: L decoder layers, the decoder norm 2D and Q D queries."""
        d, dt, m, layers = backbone.width, backbone.text.width, self.bottleneck, len(backbone.encoder)
        mia = linear_params(d, m) + linear_params(dt, m) + linear_params(m, d) + (dt - d) * m + (dt - d)
        vea = norm_params(d) + linear_params(d, m) + linear_params(m, d)
        lea = norm_params(dt) + linear_params(dt, m) + linear_params(m, dt)
        fusion = (len(backbone.decoder) * decoder_layer_params(d, backbone.ffn) + norm_params(d)
                  + backbone.query_embed.weight.numel())
        return layers * (mia + vea + lea) + linear_params(d, d) + linear_params(dt, d) + fusion
