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
    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self.rows: dict[int, tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.full = False

    def lookup(self, keys: torch.Tensor, device: torch.device) -> BackboneOutput | None:
        """The batch's output assembled from cached rows, or None unless every row is cached."""
        rows = [self.rows.get(int(k)) for k in keys]
        if any(r is None for r in rows):
            self.misses += 1
            return None
        self.hits += 1
        hidden = tuple(torch.stack([r[0][i] for r in rows]).to(device) for i in range(len(rows[0][0])))
        last = torch.stack([r[1] for r in rows]).to(device)
        mask = None if rows[0][2] is None else torch.stack([r[2] for r in rows]).to(device)
        return BackboneOutput(hidden, last, mask)

    def add(self, keys: torch.Tensor, out: BackboneOutput) -> None:
        """Keep each row's states (copies on the CPU) until the byte budget is spent."""
        if self.full or out.frames != 1 or type(out) is not BackboneOutput:
            return
        for row, key in enumerate(keys.tolist()):
            if key in self.rows:
                continue
            hidden = tuple(h[row].detach().to("cpu", copy=True) for h in out.hidden)
            last = out.last[row].detach().to("cpu", copy=True)
            mask = None if out.mask is None else out.mask[row].detach().to("cpu", copy=True)
            size = sum(h.numel() * h.element_size() for h in (*hidden, last))
            if self.bytes + size > self.max_bytes:
                self.full = True
                return
            self.rows[key] = (hidden, last, mask)
            self.bytes += size

    def stats(self) -> dict[str, int | bool]:
        return {"rows": len(self.rows), "bytes": self.bytes, "batch_hits": self.hits, "batch_misses": self.misses,
                "full": self.full}
