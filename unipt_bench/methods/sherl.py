"""SHERL (Diao et al., ECCV 2024, arXiv 2407.07523): anti-redundancy aggregation, then the last layers.

Early route: the frozen backbone runs all but its last K layers under no_grad; a light module maps each
early hidden state to width m, weighs the shallower states against the deepest one while discounting the
ones that repeat each other (anti-redundancy), and maps the aggregate back to width D. Late route: the
backbone's own last K layers (frozen, as in the official code) run on that aggregate with gradients, so
the aggregation module trains through them. docs/methods.md §SHERL. Official code: github.com/Paranioar/SHERL
(commit 36b4496), cited below as <repository folder>/<file>:<line>.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput, LateLayers
from ..configurable import bounded
from ..errors import UserError
from ..ops import l1norm, l2norm
from .base import TOKEN_KINDS, Method, SideTuned, down_params, linear_params, norm_params, register_method

TEMPERATURE = 0.1  # gate temperature T (VSE-infty/lib/adapter_for_transformer.py:70, CLIP-ViL/src/lxrt/modeling.py:640)


def anti_redundancy(guide: torch.Tensor, shallow: torch.Tensor, score: nn.Linear) -> torch.Tensor:
    """Aggregate the shallow states per token, guided by the deepest one (docs/methods.md §SHERL step 2).

    guide G [B, N, m]; shallow S [B, N, S, m] (one entry per shallower layer). Per token, a layer's
    redundancy rho_i = sum_j ReLU(cos(S_i, S_j)) over the layers; its weight ReLU(g(S_i * G)) / rho_i,
    l1-normalised over the layers. Returns sum_i w_i S_i + G [B, N, m].
    (VSE-infty/lib/adapter_for_transformer.py:38-53.)
    """
    unit = l2norm(shallow, dim=-1)
    redundancy = torch.relu(unit @ unit.transpose(-1, -2)).sum(dim=-1, keepdim=True)  # rho: [B, N, S, 1]
    weights = l1norm(torch.relu(score(shallow * guide[:, :, None])) / redundancy, dim=2)  # w: [B, N, S, 1]
    return (weights * shallow).sum(dim=2) + guide  # [B, N, m]


class GatedDown(nn.Module):
    """CLIP-ViL's Down: y = ReLU(W1 x); (W2 y + y) * sigmoid(W3 y) (CLIP-ViL/src/lxrt/modeling.py:578-592)."""

    def __init__(self, width: int, m: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(width, m), nn.Linear(m, m), nn.Linear(m, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, N, m]
        y = torch.relu(self.fc1(x))
        return (self.fc2(y) + y) * torch.sigmoid(self.fc3(y))


class Aggregate(nn.Module):
    """The early route (docs/methods.md §SHERL steps 1-3): X = Out(anti_redundancy) + tanh(gamma / T) h_{L-K}."""

    def __init__(self, downs: nn.ModuleList, out: nn.Module, m: int) -> None:
        super().__init__()
        self.downs, self.out = downs, out
        self.score = nn.Linear(m, 1)  # g (VSE-infty/lib/adapter_for_transformer.py:36)
        self.gate = nn.Parameter(torch.zeros(1))  # gamma, init 0: X starts as Out(A) alone (:71)

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        *shallow, guide = [down(h) for down, h in zip(self.downs, out.hidden, strict=True)]  # T_k: [B, N, m]
        fused = anti_redundancy(guide, torch.stack(shallow, dim=2), self.score)  # A: [B, N, m]
        entry = self.out(fused) + torch.tanh(self.gate / TEMPERATURE) * out.hidden[-1]  # X: [B, N, D]
        return replace(out, last=entry)


class SherlTuned(SideTuned):
    """The frozen early layers under no_grad (and cacheable), the aggregation, then the last `late` layers
    of the backbone with gradients flowing through them (their weights stay frozen)."""

    def __init__(self, backbone: Backbone, aggregate: Aggregate, late: int) -> None:
        super().__init__(backbone, aggregate)
        self.late = late

    def train(self, mode: bool = True) -> SherlTuned:
        super().train(mode)
        for block in self.backbone.blocks()[-self.late:]:
            block.train(mode)  # the late layers keep their dropout, as the official code trains them
        return self

    def forward(self, inputs: dict[str, torch.Tensor]) -> BackboneOutput:
        with self.backbone.early_layers_only(self.late):
            out = super().forward(inputs)  # h_0..h_{L-K} under no_grad, aggregated: out.last = X [B, N, D]
        late = self.backbone.run_late_layers(inputs, out.last, self.late)  # [B, N, D], with grad
        return replace(out, last=late.last)


@register_method("sherl")
@dataclass
class SHERL(Method):
    """Token models only: the official ResNeXt (VSE-infty/lib/modules/resnet.py:262-273) and MDETR
    (MDETR/models/transformer.py:297-425) designs rerun a CNN bottleneck or a DETR decoder layer, which
    those backbones here do not offer (no LateLayers capability)."""

    module_names = ("side",)
    kinds = TOKEN_KINDS
    needs = (LateLayers,)
    side = True
    reduction: int = bounded(2, at_least=1)  # m = E / r, joint m = D / r (VSE-infty/train_wsl_f30k.sh:4, CLIP-ViL/train_vqa.sh:1)
    late_layers: int = bounded(1, at_least=1)  # K: the last layer only (VSE-infty/lib/encoders.py:175, CLIP-ViL/src/lxrt/modeling.py:737)

    def width(self, backbone: Backbone, out_dim: int) -> int:
        """m = E / r for a transformer (VSE-infty/lib/adapter_for_transformer.py:63), D / r for a joint
        transformer (CLIP-ViL/src/lxrt/modeling.py:688)."""
        base = backbone.width if backbone.kind == "joint" else out_dim
        if base % self.reduction:
            raise UserError(f"sherl: reduction {self.reduction} does not divide the width {base}")
        return base // self.reduction

    def early_states(self, backbone: Backbone) -> int:
        """S = L - K + 1 early states h_0..h_{L-K}; the aggregation needs a shallower one beside the deepest."""
        if not 1 <= self.late_layers < backbone.num_layers:
            raise UserError(f"sherl: late_layers must be in 1..{backbone.num_layers - 1}, got {self.late_layers}")
        return backbone.num_layers - self.late_layers + 1

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        d, m, states = backbone.width, self.width(backbone, out_dim), self.early_states(backbone)
        if backbone.kind == "joint":  # CLIP-ViL/src/lxrt/modeling.py:637-642, 660
            downs = nn.ModuleList(GatedDown(d, m) for _ in range(states))
            out = nn.Sequential(nn.ReLU(), nn.Linear(m, d))
        else:  # VSE-infty/lib/adapter_for_transformer.py:18-28, 67-75
            downs = nn.ModuleList(nn.Sequential(nn.Linear(d, m), nn.LayerNorm(m)) for _ in range(states))
            out = nn.Sequential(nn.ReLU(), nn.Linear(m, d), nn.LayerNorm(d, eps=1e-12), nn.Dropout(0.1))
        return SherlTuned(backbone, Aggregate(downs, out, m), self.late_layers)

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """S Down + g + gamma + Out (docs/methods.md §SHERL): transformer S (D m + 3m) + (m + 1) + 1 +
        (m D + D) + 2D; joint S (D m + m + 2 (m^2 + m)) + (m + 1) + 1 + (m D + D)."""
        d, m, states = backbone.width, self.width(backbone, out_dim), self.early_states(backbone)
        if backbone.kind == "joint":
            down, out = linear_params(d, m) + 2 * linear_params(m, m), linear_params(m, d)
        else:
            down, out = down_params(d, m), linear_params(m, d) + norm_params(d)
        return states * down + linear_params(m, 1) + 1 + out

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        return backbone.width  # the late layers' tokens; the task head projects (VSE-infty/lib/encoders.py:184)
