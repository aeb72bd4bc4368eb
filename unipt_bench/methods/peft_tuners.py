"""Every tuner type of the installed Hugging Face PEFT as a method: `peft:<type>` with PEFT's own options.

A suite names `peft:lora`, `peft:ia3`, ... with the options of that type's PEFT config (e.g.
`{ method = "peft:lora", r = 16, use_dora = true }`). The method builds the config, picks the target modules
from the backbone's declared projections when none are given, applies `get_peft_model` to the tuned tower's
model and records the PEFT version and the resolved config in the result's protocol. Types that cannot
adapt a tower's layers say why (`unipt-bench list methods`).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import peft
from peft import PeftType, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ..backbones.base import Backbone, LoraTargets
from ..configurable import OptionError
from ..errors import NotApplicable, UserError
from .base import METHODS, Method, freeze

PREFIX = "peft:"
RESERVED = ("peft_type", "task_type", "inference_mode")  # set by the method, not by a suite

PROMPT_LEARNING = ("prompt learning: PEFT adds virtual tokens or key/value prefixes inside a PeftModel "
                   "of a transformers task model (task_type), not inside a tower's own forward; "
                   "the `prompt` method is prefix tuning for towers")
WHY_NOT = {  # types that do not adapt a tower's layers, and why
    PeftType.ADAPTION_PROMPT: "adaption prompts are written into LLaMA-style decoder attention: a causal LM only",
    PeftType.XLORA: "mixes LoRA adapters already trained (loaded from paths) inside a causal LM that runs "
                    "with use_cache=False: not a tuner of a pretrained tower",
    PeftType.POLY: "routes every sample through skills chosen by task_ids passed with each batch: multi-task "
                   "training, which no task of the suite feeds",
    PeftType.FROD: "keeps sparse tensors, whose bytes PyTorch's memory tracker cannot read (no storage)",
    PeftType.SHIRA: "keeps sparse tensors, whose bytes PyTorch's memory tracker cannot read (no storage)",
    PeftType.SHADOW: "a shadow network riding a decoder-only model's decoder loop: a causal LM only",
    PeftType.TRAINABLE_TOKENS: "trains chosen rows (token_indices) of a token embedding: a vocabulary change "
                               "that image, grid and feature towers have no embedding table for",
}
NOT_ESTIMABLE = {  # types that run on real tensors only, and what an estimate's meta build or fake tensors lack
    PeftType.ADAMSS: "clusters the SVD of each pretrained weight into subspaces when it is built",
    PeftType.BOFT: "builds its butterfly permutation matrices from index values when it is built",
    PeftType.UNILORA: "draws its shared-vector indices with a value-dependent bincount when it is built",
    PeftType.OSF: "splits each pretrained weight by its SVD when it is built (the split sets parameter shapes)",
    PeftType.WAVEFT: "picks its wavelet coefficients with nonzero() when it is built (a value-dependent shape)",
    PeftType.LOHA: "draws a random number in every training forward to decide its module dropout",
    PeftType.LOKR: "draws a random number in every training forward to decide its module dropout",
    PeftType.VBLORA: "shares one trainable vector bank among layers by reference, which the estimate's "
                     "fake materialisation cannot swap",
    PeftType.FOURIERFT: "gives an estimate that differs from the cpu measurement in the optimizer phase (not "
                        "explained yet)",
}
OPTION_DEFAULTS = {  # options PEFT requires without a default, with the value a profile needs
    PeftType.ADALORA: {"total_step": 1000},  # it only schedules the rank budget; a profile runs a few steps
}


def type_name(peft_type: PeftType) -> str:
    """The method name of a PEFT type: `peft:` and the type in lower case (`peft:lora`, `peft:ln_tuning`)."""
    return PREFIX + peft_type.value.lower()


def refusal_of(peft_type: PeftType) -> str:
    """Why a PEFT type cannot run on any tower ("" when it can)."""
    if peft_type in WHY_NOT:
        return WHY_NOT[peft_type]
    config = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if config is None or PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is None:
        return "the installed PEFT registers no tuner for it"
    if issubclass(config, peft.PromptLearningConfig):
        return PROMPT_LEARNING
    return ""


def apply_peft(backbone: Backbone, config: peft.PeftConfig) -> peft.PeftModel:
    """Freeze `backbone` and apply `get_peft_model` to its low-rank target root, which PEFT adapts in place.

    The backbone then calls that root through PEFT's wrapper, which also holds the state some tuners share
    among layers (e.g. VeRA's random projections), so the wrapper must sit in the backbone's module tree.
    """
    freeze(backbone)
    root, _ = backbone.lora_targets()
    slot = next((name for name, child in backbone.named_children() if child is root), None)
    if slot is None:
        raise NotApplicable(f"{type(backbone).__name__}: its low-rank target root is not one of its own modules")
    tuned = get_peft_model(root, config)
    setattr(backbone, slot, tuned)
    return tuned


def on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def plain(value: Any) -> Any:
    """A config value as JSON writes it: sets as sorted lists, enums by value."""
    return json.loads(json.dumps(value, default=lambda v: v.value if isinstance(v, enum.Enum) else sorted(v)))


@dataclass
class PeftTuner(Method):
    """A PEFT tuner type; `options` are its PEFT config's fields as a suite writes them."""

    peft_type: ClassVar[PeftType]
    needs = (LoraTargets,)
    checks_backbones = True
    options_given: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolved: list[dict[str, Any]] = []  # the config applied to each tuned tower

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PeftTuner:
        config_class = PEFT_TYPE_TO_CONFIG_MAPPING[cls.peft_type]
        known = {f.name for f in fields(config_class)} - set(RESERVED)
        unknown = sorted(set(options) - known)
        if unknown:
            raise OptionError(f"method {cls.name!r}: unknown option(s) {', '.join(unknown)} "
                              f"(PEFT {peft.__version__} {config_class.__name__})", unknown[0])
        method = cls(dict(options))
        method.config(None)  # PEFT checks the values now, when the suite is read
        return method

    def options(self) -> dict[str, Any]:
        return dict(self.options_given)

    def config(self, backbone: Backbone | None) -> peft.PeftConfig:
        """The PEFT config: the suite's options over the defaults, targets from `backbone` when none are given."""
        values = {**OPTION_DEFAULTS.get(self.peft_type, {}), **self.options_given}
        if backbone is not None and "target_modules" not in values:
            values["target_modules"] = self.default_targets(backbone)
        try:
            return PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type](**values)
        except (TypeError, ValueError) as exc:
            raise self.rejected(exc) from None

    def rejected(self, exc: Exception) -> OptionError:
        """PEFT's refusal as one line naming the method and the option(s) it concerns: those the suite gave
        that the message names, else the defaults it names."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        words = set(re.findall(r"\w+", message))
        given = [k for k in self.options_given if k in words]
        if given:
            return OptionError(f"method {self.name!r}: PEFT rejects option {', '.join(given)}: {message}", given[0])
        fields_named = sorted(f.name for f in fields(PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type]) if f.name in words)
        what = f"the default of option {', '.join(fields_named)}" if fields_named else "these options"
        return OptionError(f"method {self.name!r}: PEFT rejects {what}: {message}", self.name)

    def refusal(self, backbone: Backbone) -> str:
        reason = super().refusal(backbone)
        if not reason and self.peft_type in NOT_ESTIMABLE and on_meta(backbone):
            reason = (f"{self.name} runs in cpu and cuda modes only: it {NOT_ESTIMABLE[self.peft_type]}, "
                      "which an estimate (meta build, fake tensors) cannot follow")
        return reason

    def default_targets(self, backbone: Backbone) -> list[str]:
        """The backbone's low-rank targets (query and value, or a fused qkv); LayerNorms for LN tuning."""
        root, targets = backbone.lora_targets()
        if self.peft_type == PeftType.LN_TUNING:
            return sorted({name.rpartition(".")[2] for name, m in root.named_modules() if isinstance(m, nn.LayerNorm)})
        return list(targets)

    def check_backbone(self, backbone: Backbone) -> None:
        """Explicit target modules must match a module of the tower; the whole config must apply to it."""
        if self.refusal(backbone):
            return  # not applicable: reported as such when the run is profiled
        root, _ = backbone.lora_targets()
        config = self.config(backbone)
        if "target_modules" in self.options_given and not any(
                check_target_module_exists(config, name) for name, _ in root.named_modules()):
            raise OptionError(f"method {self.name!r}: option target_modules {self.options_given['target_modules']!r} "
                              f"matches no module of {type(backbone).__name__}", "target_modules")
        self.build(backbone, 0)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        config = self.config(backbone)
        try:
            apply_peft(backbone, config)
        except (TypeError, ValueError) as exc:
            raise self.rejected(exc) from None
        self.resolved.append(plain(config.to_dict()))
        return backbone

    def recorded(self) -> dict[str, Any]:
        return {"peft": {"version": peft.__version__, "type": self.peft_type.value, "configs": self.resolved}}

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """PEFT's own count of what its tuner trains (`get_nb_trainable_parameters`) on a copy of the backbone."""
        tuned = get_peft_model(backbone.lora_targets()[0], self.config(backbone))
        return tuned.get_nb_trainable_parameters()[0]


def peft_method(type_rest: str) -> type[PeftTuner]:
    """The method class of `peft:<type>` (any case); unknown types and types that cannot run are UserErrors."""
    by_name = {t.value.lower(): t for t in PeftType}
    peft_type = by_name.get(type_rest.lower())
    if peft_type is None:
        raise UserError(f"unknown PEFT type {type_rest!r} for method '{PREFIX}{type_rest}' "
                        f"(PEFT {peft.__version__} types: {', '.join(sorted(by_name))})")
    reason = refusal_of(peft_type)
    if reason:
        raise UserError(f"method {type_name(peft_type)!r} does not run on a suite's towers: {reason}")
    layer = getattr(PEFT_TYPE_TO_TUNER_MAPPING[peft_type], "tuner_layer_cls", None)
    markers = tuple(getattr(layer, "adapter_layer_names", ()))
    cls = type(f"Peft{peft_type.value.title()}", (PeftTuner,),
               {"peft_type": peft_type, "name": type_name(peft_type), "module_names": markers})
    return dataclass(cls)


def peft_types() -> dict[str, str]:
    """Every PEFT type's method name and why it cannot run ("" when it runs), for `unipt-bench list`."""
    return {type_name(t): refusal_of(t) for t in PeftType}


METHODS.family(PREFIX, peft_method)
