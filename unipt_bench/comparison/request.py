"""What a comparison asks: the user's model (one tower or named towers), the task, the shape and the budget,
checked up front (one line per problem, before anything is traced or written), and the suite that runs it.

A lone model is the tuned tower; where the task needs a second tower, it gets the partner the paper's
Table 5 gives its side (BUTD region features for a text model, a Bi-GRU for an image or video model),
trained in full with the head (`tuned = false`), so that only the user's model changes between methods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

TASKS = ("retrieval", "vqa", "video-retrieval", "grounding", "classification")
# command-line shape flags -> the tower shape key they set
SHAPE_FLAGS = {"seq_len": "--seq-len", "image_size": "--image-size", "frames": "--frames"}
# the partner tower of a lone model, by the model's modality (see the module docstring)
PARTNERS = {"text": {"name": "image", "backbone": "butd-regions", "tuned": False},
            "image": {"name": "text", "backbone": "bigru", "tuned": False},
            "video": {"name": "text", "backbone": "bigru", "tuned": False}}
SERVES = {  # task -> the modalities of a lone tuned model it can take, and why not otherwise
    "retrieval": ({"text", "image"}, "a text or an image model (use video-retrieval for frames)"),
    "video-retrieval": ({"video"}, "a video model (a tower over frames, e.g. clip-vit-b32-frames)"),
    "vqa": ({"text", "image", "text+grid"}, "a joint model (e.g. clip-vil), or a text or an image model"),
    "grounding": ({"image+text"}, "an encoder-decoder over image and text (e.g. mdetr-r101)"),
    "classification": ({"text", "image", "video", "text+grid"}, "a text, image or video model"),
}


@dataclass
class ModelTower:
    """One tower of the user's model, as built on the meta device to check it and read its shape."""

    name: str
    backbone: str
    modality: str
    kind: str
    width: int
    shape_defaults: dict[str, int]
    param_bytes: int  # its weights (the frozen model's own memory)
    position_limit: int | None  # longest sequence its position embeddings take (text), when known


@dataclass
class Request:
    """A checked comparison request."""

    model: str
    task: str
    batch: int
    shape: dict[str, int]  # the asked shape flags: seq_len, image_size, frames (those given)
    budget_bytes: int
    budget_label: str  # "24.00 GiB" or "A100-80GB (80 GiB)"
    methods: list[str]
    mode: str = "estimate"
    towers: list[ModelTower] = field(default_factory=list)
    partner: dict[str, Any] | None = None
    memory: dict[str, str] = field(default_factory=dict)  # memory options other than the defaults (memory_options.py)

    @property
    def floor_bytes(self) -> int:
        """The user's model's own weights: no method trains it in less."""
        return sum(t.param_bytes for t in self.towers)

    def axes(self) -> dict[str, int]:
        """Every shape axis of the comparison, "<tower>.<key>" -> its value (asked, else the tower's default)."""
        axes = {}
        for tower in self.towers:
            for key, default in tower.shape_defaults.items():
                if key in SHAPE_FLAGS:
                    axes[f"{tower.name}.{key}"] = self.shape.get(key, default)
        if self.partner is not None and "seq_len" in self.shape and self.partner["backbone"] == "bigru":
            axes[f"{self.partner['name']}.seq_len"] = self.shape["seq_len"]
        return axes

    def slug(self) -> str:
        """A name for the suite's configuration, from the model's own name."""
        names = [re.sub(r"[^A-Za-z0-9_.+-]", "-", Path(t.backbone.split(":", 1)[-1].rstrip("/")).name or t.backbone)
                 for t in self.towers]
        return re.sub(r"-+", "-", "-".join(names)).strip("-.")[:40] or "model"


def split_towers(model: str) -> list[tuple[str, str]]:
    """"hf:bert" -> [("", "hf:bert")]; "text=hf:a,image=timm:b" -> [("text", ...), ("image", ...)]."""
    if "=" not in model:
        return [("", model.strip())]
    towers = []
    for part in model.split(","):
        name, sep, backbone = part.partition("=")
        if not sep or not name.strip() or not backbone.strip():
            raise UserError(f"--model {model!r}: give one model, or towers as name=model,name=model")
        towers.append((name.strip(), backbone.strip()))
    return towers


def check_cached(backbone: str) -> None:
    """An hf: hub id must be in the local Hugging Face cache: comparisons never download."""
    source = backbone.removeprefix("hf:")
    if not backbone.startswith("hf:") or Path(source).exists():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except Exception:  # noqa: BLE001  (an id the hub would refuse is not cached either)
        cached = None
    if not isinstance(cached, str):
        raise UserError(f"{backbone}: not a local folder, and the hub id is not in the local Hugging Face cache "
                        "(compare works offline); pass a folder holding the model's config.json: "
                        "--model hf:path/to/folder")


def local_backbone(backbone: str) -> str:
    """hf: folders as absolute paths, so that the saved suite runs from any directory."""
    source = backbone.removeprefix("hf:")
    if backbone.startswith("hf:") and Path(source).exists():
        return "hf:" + str(Path(source).resolve())
    return backbone


def inspect_tower(name: str, backbone: str) -> ModelTower:
    """Build `backbone` on the meta device: its modality, width, shape keys and weight bytes."""
    import torch

    from ..backbones import BACKBONES, create_backbone, is_backbone

    if not is_backbone(backbone):
        raise UserError(f"--model: unknown backbone {backbone!r} (give hf:<hub id or folder>, timm:<model name>, "
                        f"or one of: {', '.join(BACKBONES.names())})")
    check_cached(backbone)
    try:
        with torch.device("meta"):
            built = create_backbone(backbone, "random", load=False)
    except UserError as exc:
        raise UserError(f"--model {backbone}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (a user's model may fail to build in any way: one line)
        raise UserError(f"--model {backbone}: cannot build it: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    config = getattr(built, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if built.modality == "text" else None
    if limit and "roberta" in str(getattr(config, "model_type", "")):
        limit -= (getattr(config, "pad_token_id", 1) or 0) + 1  # RoBERTa's positions start after the padding id
    param_bytes = sum(p.numel() * p.element_size() for p in built.parameters())
    return ModelTower(name, backbone, built.modality, built.kind, built.width, dict(built.shape_defaults),
                      param_bytes, limit)


def make_request(model: str, task: str, batch: int, shape: dict[str, int | None], budget_bytes: int,
                 budget_label: str, methods: list[str], mode: str = "estimate",
                 memory: dict[str, str | None] | None = None) -> Request:
    """Check everything that can be checked without tracing; one UserError line per problem."""
    from ..memory_options import check as check_memory

    memory_options = check_memory({k: v for k, v in (memory or {}).items() if v is not None}, "compare")
    if task not in TASKS:
        raise UserError(f"--task {task!r}: one of {', '.join(TASKS)}")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    if mode == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--mode cuda: no CUDA GPU is visible; --mode estimate answers without one")
    asked = {k: v for k, v in shape.items() if v is not None}
    for key, value in asked.items():
        if value < 1:
            raise UserError(f"{SHAPE_FLAGS[key]} {value}: must be at least 1")
    names = split_towers(model)
    if len(names) > 2:
        raise UserError(f"--model {model!r}: at most two towers")
    towers = []
    for name, backbone in names:
        tower = inspect_tower(name, local_backbone(backbone))
        tower.name = name or {"text+grid": "joint", "image+text": "joint"}.get(tower.modality, tower.modality)
        towers.append(tower)
    if len({t.name for t in towers}) != len(towers):
        raise UserError(f"--model {model!r}: tower names must differ")
    partner = None
    if len(towers) == 1:
        allowed, what = SERVES[task]
        tower = towers[0]
        if tower.modality not in allowed:
            raise UserError(f"--task {task}: {tower.backbone} is a {tower.modality} model ({tower.kind}); "
                            f"{task} takes {what}")
        needs_partner = task in ("retrieval", "video-retrieval") or (task == "vqa" and tower.modality != "text+grid")
        partner = dict(PARTNERS[tower.modality]) if needs_partner else None
    elif task in ("grounding", "classification"):
        raise UserError(f"--task {task}: takes one model, not two towers")
    request = Request(model, task, batch, asked, budget_bytes, budget_label, methods, mode, towers, partner,
                      memory_options)
    has = {key for t in towers for key in t.shape_defaults}
    if partner is not None and partner["backbone"] == "bigru":
        has.add("seq_len")
    for key in asked:
        if key not in has:
            takes = ", ".join(SHAPE_FLAGS[k] for k in SHAPE_FLAGS if k in has) or "no length flag"
            raise UserError(f"{SHAPE_FLAGS[key]}: {task} on {model} has no {key.replace('_', ' ')} axis "
                            f"(it takes {takes})")
    for tower in towers:
        if tower.position_limit and asked.get("seq_len", 0) > tower.position_limit:
            raise UserError(f"--seq-len {asked['seq_len']}: {tower.backbone} takes at most {tower.position_limit} "
                            "tokens (its position embeddings)")
    if budget_bytes < request.floor_bytes:
        from ..cli.format import human_bytes

        raise UserError(f"nothing fits in {budget_label}: the model's own weights take "
                        f"{human_bytes(request.floor_bytes)} ({request.floor_bytes:,} B) before any training state")
    return request


def budget_of(budget: str | int | None, gpu: str | None) -> tuple[int, str]:
    """(bytes, label) of --budget or --gpu (exactly one of them)."""
    from ..cli.format import human_bytes
    from ..fit import parse_bytes
    from ..gpus import GIB, gpu_memory

    if budget is not None and gpu is not None:
        raise UserError("--budget and --gpu: give one of them (the GPU's memory is the budget)")
    if budget is None and gpu is None:
        raise UserError("give a memory budget: --budget (e.g. 24GiB) or --gpu (a name; --gpu list shows them)")
    if gpu is not None:
        name, memory = gpu_memory(gpu)
        return memory, f"{name} ({memory // GIB} GiB)"
    memory = budget if isinstance(budget, int) else parse_bytes(str(budget))
    if memory <= 0:
        raise UserError(f"--budget {budget!r}: must be more than 0 bytes")
    return memory, human_bytes(memory)


def method_names(methods: str | list[str] | None) -> list[str]:
    """The methods to compare (default: every registered one), full fine-tuning always among them: it is the
    reference every crossing is measured against."""
    from ..methods import METHODS

    if methods is None:
        return list(dict.fromkeys(["full", *METHODS.names()]))
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: {', '.join(unknown) or 'none given'}; known: {', '.join(METHODS.names())}")
    return list(dict.fromkeys(["full", *names]))
