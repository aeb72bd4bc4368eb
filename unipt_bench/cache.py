"""Hidden-state cache for side methods: the frozen backbone's outputs, computed once per distinct input.

LST and UniPT never backpropagate into the backbone, which runs in eval mode, so when a tower's
inputs are deterministic (no augmentation) its hidden states for a given input never change: later
epochs can reuse them. Keys are per-sample content hashes (`cache_keys` in the tower's inputs); the
states live on the CPU, up to `max_bytes`.
"""

from __future__ import annotations

import torch

from .backbones.base import BackboneOutput


class HiddenCache:
    """Per-sample rows: every hidden state and `last` packed in one tensor when their shapes agree
    (token models: [L+2, N, D]), so a batch is assembled with a single stack."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self.rows: dict[int, tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor | None]] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.full = False

    def lookup(self, keys: torch.Tensor, device: torch.device) -> BackboneOutput | None:
        """The batch's output assembled from cached rows, or None unless every row is cached."""
        rows = [self.rows.get(k) for k in keys.tolist()]
        if any(r is None for r in rows):
            self.misses += 1
            return None
        self.hits += 1
        if isinstance(rows[0][0], torch.Tensor):
            *hidden, last = torch.stack([r[0] for r in rows]).to(device).unbind(1)  # [B, L+2, N, D] -> states
        else:
            *hidden, last = (torch.stack([r[0][i] for r in rows]).to(device) for i in range(len(rows[0][0])))
        mask = None if rows[0][1] is None else torch.stack([r[1] for r in rows]).to(device)
        return BackboneOutput(tuple(hidden), last, mask)

    def add(self, keys: torch.Tensor, out: BackboneOutput) -> None:
        """Keep each row's states (copies on the CPU) until the byte budget is spent."""
        if self.full or out.frames != 1 or type(out) is not BackboneOutput:
            return
        states = (*out.hidden, out.last)
        packable = all(s.shape == states[0].shape for s in states)
        for row, key in enumerate(keys.tolist()):
            if key in self.rows:
                continue
            parts = [s[row].detach().to("cpu") for s in states]
            packed = torch.stack(parts) if packable else tuple(p.clone() for p in parts)
            mask = None if out.mask is None else out.mask[row].detach().to("cpu", copy=True)
            size = sum(p.numel() * p.element_size() for p in parts)
            if self.bytes + size > self.max_bytes:
                self.full = True
                return
            self.rows[key] = (packed, mask)
            self.bytes += size

    def stats(self) -> dict[str, int | bool]:
        return {"rows": len(self.rows), "bytes": self.bytes, "batch_hits": self.hits, "batch_misses": self.misses,
                "full": self.full}
