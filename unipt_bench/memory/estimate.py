"""Exact live tensor bytes by category, phase and owner, from PyTorch's MemTracker (torch.distributed._tools).

Works on fake tensors (`estimate` mode: paper-scale models with no GPU and no memory) and on real CPU
tensors (`cpu` mode). Three workarounds, all for torch 2.13-2.14: frozen parameters get a no-op grad
hook handle (MemTracker would hook every parameter and fail on frozen ones), module stats are reset
before each forward (a second iteration would otherwise raise), and under no_grad the module tracker
registers no backward hooks (see `OrderedModTracker._fw_post_hook`).

Attribution: every activation and temporary is charged, when it is created, to the innermost module
running (backbone, the method's own modules, the task head, or "other": the loss, clipping and the
optimizer). The innermost module is the one entered last among those still running (`OrderedModTracker`):
in backward a module whose inputs need no gradient stays "running" until the backward ends, so the
deepest path would keep charging a frozen layer for what the modules after it allocate. Parameters and buffers belong to their module; gradients and optimizer state present at
the peak are split in proportion to each owner's trainable parameter bytes.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache, partial
from typing import Any

import torch
from torch import nn, optim
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.autograd.graph import register_multi_grad_hook
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _UpdateType, _WeakRefInfo
from torch.distributed._tools.mod_tracker import ModTracker
from torch.distributed.tensor import DTensor
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from . import events as allocation_events
from .base import CATEGORIES, OWNERS, TRAINING_PHASES
from .registry import TrackerContext, register_tracker

TOTAL = "Total"
CATEGORY_OF = {
    _MemRefType.PARAM: "params",
    _MemRefType.BUFFER: "buffers",
    _MemRefType.GRAD: "grads",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OPT: "optimizer_state",
    _MemRefType.OTH: "inputs",  # only the batch is registered as an external tensor
}


DYNAMIC = (_MemRefType.ACT, _MemRefType.TEMP)
FAKE_MODE = torch._C._TorchDispatchModeKey.FAKE
DEVICE_QUERY = torch.ops.prim.device.default  # a fake tensor's `.device`: two in three ops of a traced step
SCALAR_READ = torch.ops.aten._local_scalar_dense.default  # `.item()`: AdamW reads every step count twice a step


class _NoHook:
    def remove(self) -> None:
        pass


CUDA_BLOCK = 512  # bytes: the CUDA caching allocator rounds every allocation up to a multiple of this


@contextmanager
def cuda_allocator_blocks() -> Iterator[None]:
    """Count every storage as the CUDA caching allocator's `allocated_bytes` does: rounded up to 512 B.

    Fake tensors live on the CPU device, where MemTracker counts exact bytes; comparing an estimate
    with `max_memory_allocated` needs the allocator's rounding (it matters for small tensors only).
    """
    exact = _WeakRefInfo._calculate_mem_consumed

    def rounded(info: _WeakRefInfo) -> int:
        return math.ceil(info.size * info.element_size / CUDA_BLOCK) * CUDA_BLOCK

    _WeakRefInfo._calculate_mem_consumed = rounded
    try:
        yield
    finally:
        _WeakRefInfo._calculate_mem_consumed = exact


class OrderedModTracker(ModTracker):
    """ModTracker that knows the order modules were entered in, and never changes what backward holds.

    - `innermost()`: the running module entered last (ModTracker keeps a set of running modules).
    - A module's backward ends at the first gradient of its inputs (multi-grad hook mode "any"); ModTracker
      waits for all of them ("all"), and a hook in that mode keeps every gradient it has been given alive
      until the last one arrives: bytes an untracked backward frees earlier.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = itertools.count()
        self.entered: dict[str, int] = {}  # module name -> when it last entered (forward or backward)

    def _get_append_fn(self, w_mod: Any, name: str, is_bw: bool) -> Callable[..., None]:
        append = super()._get_append_fn(w_mod, name, is_bw)

        def fn(*args: Any) -> None:
            append(*args)
            self.entered[name] = next(self.clock)

        return fn

    def _fw_pre_hook(self, mod: nn.Module, input: Any) -> None:
        """ModTracker's forward pre-hook, its inputs' backward hook in mode "any"."""
        name = self._get_mod_name(mod)
        w_mod = weakref.ref(mod)
        self._get_append_fn(w_mod, name, False)()
        if self._user_pre_fw_hook is not None:
            self._user_pre_fw_hook(mod, input)
        if self.is_bw:
            return
        tensors = [a for a in tree_leaves(input) if isinstance(a, torch.Tensor) and a.requires_grad] if (
            torch.is_grad_enabled()) else []  # no backward under no_grad (see _fw_post_hook)
        if tensors:
            register_multi_grad_hook(tensors, self._get_pop_fn(w_mod, name, True), mode="any")
        else:  # no input takes a gradient: the module's backward ends with the whole backward
            self._post_bw_callbacks_to_enqueue.append(self._get_pop_fn(w_mod, name, True))

    def _fw_post_hook(self, mod: nn.Module, input: Any, output: Any) -> None:
        """ModTracker's forward post-hook, without backward hooks under no_grad: no backward runs there, and a
        view of a parameter taken there requires grad without a grad_fn, which a hook cannot be registered on."""
        name = self._get_mod_name(mod)
        w_mod = weakref.ref(mod)
        if self._user_post_fw_hook is not None:
            self._user_post_fw_hook(mod, input, output)
        self._get_pop_fn(w_mod, name, False)()
        if self.is_bw or not torch.is_grad_enabled():
            return
        tensors = [a for a in tree_leaves(output) if isinstance(a, torch.Tensor) and a.requires_grad]
        if tensors:
            register_multi_grad_hook(tensors, self._get_append_fn(w_mod, name, True), mode="any")

    def innermost(self) -> str:
        """Path (relative to the model) of the innermost module running; "" outside every module."""
        running = self.parents - {"Global"}
        last = max(running, key=lambda name: self.entered.get(name, -1), default="")
        return last.split(".", 1)[1] if "." in last else ""


class StorageMap:
    """Storage -> (info, weak reference), keyed by the storage's id: MemTracker's map of tracked storages.

    MemTracker keeps it in a WeakIdKeyDictionary, which builds a weak reference object for every
    lookup (every output of every op); here a lookup is one dict access. An entry leaves the map when
    its storage is freed, before the storage's id can be reused.
    """

    def __init__(self) -> None:
        self.data: dict[int, tuple[_WeakRefInfo, weakref.ref]] = {}
        self.removers: dict[int, weakref.ref] = {}

    def get(self, storage: torch.UntypedStorage, default: Any = None) -> Any:
        return self.data.get(id(storage), default)

    def __setitem__(self, storage: torch.UntypedStorage, value: tuple[_WeakRefInfo, weakref.ref]) -> None:
        key = id(storage)
        self.data[key] = value
        self.removers[key] = weakref.ref(storage, partial(self._remove, key))

    def _remove(self, key: int, _: weakref.ref) -> None:
        del self.data[key], self.removers[key]


class PhasedMemTracker(MemTracker):
    """MemTracker that also keeps the peak snapshot of each phase, the peak of each step and live bytes by owner.

    The figures are MemTracker's; the work per op (a paper-scale trace runs 10^4-10^5 ops) is less:
    outputs are found by a loop instead of a pytree map, storages are looked up by id, the live total
    is kept as one number, so most ops compare numbers and copy nothing, and module-wise peak
    snapshots, which no result reads, are not kept.
    """

    def __init__(self, owner_of: Callable[[str], str] | None = None, grads_in_buckets: bool = False) -> None:
        super().__init__()
        # DDP with gradient_as_bucket_view: gradients are views into its buckets, which are counted apart
        # (ddp_buckets.py), so they count 0 bytes here
        self.grads_in_buckets = grads_in_buckets
        self._WINFO = StorageMap()
        self._mod_tracker = OrderedModTracker()
        self.live_total = 0  # live bytes, all categories and devices
        self.phase: str | None = None
        self.phase_peaks: dict[str, dict[str, int]] = {}
        self.step_peak = 0
        self.step_peaks: list[int] = []
        self.owner_of = cache(owner_of) if owner_of else None  # module path relative to the model -> owner
        self.owners: dict[Any, str] = {}  # activation/temporary storage info -> owner
        self.live_by_owner: dict[str, dict[str, int]] = {}
        self.peak_by_owner: dict[str, dict[str, int]] = {}
        self.events = allocation_events.active()  # None unless a caller records this run's events
        if self.events is not None:
            self.events.grads_in_buckets = grads_in_buckets

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        """Run the op, track its output storages and update the peaks, as MemTracker does (its extra
        steps for DTensor sharding propagation and fake collectives concern no model here).

        The active fake mode is read from its dispatch slot: at most one FakeTensorMode is active at a
        time, so this is what MemTracker's scan of the mode stack (`active_fake_mode`) finds.
        """
        if DTensor in types:
            return NotImplemented
        if func is DEVICE_QUERY and isinstance(args[0], FakeTensor):  # fake mode's own answer, without its dispatch
            self._update_peak_stats(None)
            return torch.device("meta") if args[0].fake_mode.in_kernel_invocation else args[0].fake_device
        if func is SCALAR_READ and isinstance(args[0], FakeTensor) and args[0].constant is not None:
            self._update_peak_stats(None)
            with no_dispatch():  # as fake mode answers: the op on the constant it keeps for the tensor
                return func(args[0].constant)
        res = func(*args, **(kwargs or {}))
        if torch._C._get_dispatch_mode(FAKE_MODE) is self._fake_mode_on_entry:
            if self._in_opt:
                reftype = _MemRefType.OPT
            elif self._mod_tracker.is_bw and not self._in_ac:
                reftype = _MemRefType.TEMP
            else:
                reftype = _MemRefType.ACT
            if isinstance(res, torch.Tensor):
                self._track(reftype, res)
            else:
                for leaf in tree_leaves(res):
                    if isinstance(leaf, torch.Tensor):
                        self._track(reftype, leaf)
            self._update_peak_stats(None)
        return res

    def get_tracker_snapshot(self, type: str = "current") -> dict[torch.device, dict[Any, int]]:  # noqa: A002
        """MemTracker's snapshot (its module hooks take one per module call) without its deepcopy: per device, a
        dict of byte counts, which a copy of each dict already separates."""
        if type not in ("current", "peak"):
            raise ValueError(f"Invalid type {type}")
        snaps = self._curr_mem_snap if type == "current" else self._peak_mem_snap
        return {device: dict(snap) for device, snap in snaps.items()}

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        """An evaluation runs many batches, each a forward of the root module: each is a new MemTracker
        iteration (MemTracker allows one per reset), so the module stats are reset before it."""
        if (self.phase == "evaluation" and module in self.memory_tracking and not self._mod_tracker.is_bw
                and set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)} == {"Global"}):
            self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)

    def _track(self, reftype: Any, t: torch.Tensor) -> None:
        """Track a new storage, or a known one whose size changed (MemTracker's rule, one storage per tensor)."""
        if is_traceable_wrapper_subclass(t):
            super()._track(reftype, t)
            return
        storage = t.untyped_storage()
        known = self._WINFO.get(storage)
        if known is not None:
            winfo = known[0]
            if winfo.size != storage.size():
                old_mem_consumed = winfo.mem_consumed
                winfo.update_mem_consumed(storage)
                self._update_snap(_UpdateType.SIZE, winfo, old_mem_consumed=old_mem_consumed)
            return
        winfo, w_st = _WeakRefInfo.create_winfo(storage, t.device, reftype, self._delete_callback)
        self._WINFO[storage] = (winfo, w_st)
        if winfo.mem_consumed > 0:
            self._update_snap(_UpdateType.ADD, winfo)

    def charge(self, owner: str, reftype: Any, nbytes: int) -> None:
        cats = self.live_by_owner.setdefault(owner, {})
        cats[CATEGORY_OF[reftype]] = cats.get(CATEGORY_OF[reftype], 0) + nbytes

    def _update_snap(self, u_type: Any, winfo: Any, old_mem_consumed: int | None = None,
                     old_reftype: Any = None) -> None:
        """MemTracker's single point for byte changes (same per-device snapshot), also keeping the live
        total and activation/temporary bytes per owner."""
        if self.events is not None:
            self.record(u_type, winfo, old_reftype)
        snap = self._curr_mem_snap.get(winfo.device)
        if snap is None:
            snap = self._curr_mem_snap[winfo.device] = dict.fromkeys((*self._ref_class, TOTAL), 0)
        category = winfo.reftype  # the category whose bytes change
        if self.grads_in_buckets and _MemRefType.GRAD in (winfo.reftype, old_reftype):
            category, change = self.bucket_view_change(u_type, winfo, old_reftype)
        elif u_type == _UpdateType.ADD:
            change = winfo.mem_consumed
        elif u_type == _UpdateType.DEL:
            change = -winfo.mem_consumed
        elif u_type == _UpdateType.SIZE:
            change = winfo.mem_consumed - old_mem_consumed
        else:  # REF: the bytes move from one category to another
            snap[old_reftype] -= winfo.mem_consumed
            change = 0
            snap[winfo.reftype] += winfo.mem_consumed
        if change:
            snap[category] += change
            snap[TOTAL] += change
            self.live_total += change
        if u_type in (_UpdateType.DEL, _UpdateType.SIZE) and snap[TOTAL] == 0:
            del self._curr_mem_snap[winfo.device]
        if self.owner_of is not None:
            self.charge_owner(u_type, winfo, old_mem_consumed, old_reftype)

    def record(self, u_type: Any, winfo: Any, old_reftype: Any) -> None:
        kind = {_UpdateType.ADD: allocation_events.ALLOC, _UpdateType.DEL: allocation_events.FREE,
                _UpdateType.SIZE: allocation_events.RESIZE, _UpdateType.REF: allocation_events.RELABEL}[u_type]
        self.events.storage(kind, winfo, CATEGORY_OF[winfo.reftype], CATEGORY_OF.get(old_reftype))

    @staticmethod
    def bucket_view_change(u_type: Any, winfo: Any, old_reftype: Any) -> tuple[Any, int]:
        """(category, change of bytes) of an update that concerns a gradient when gradients count 0 bytes."""
        if u_type != _UpdateType.REF:
            return winfo.reftype, 0  # a gradient added, freed or resized
        if old_reftype == _MemRefType.GRAD:  # a gradient becomes something else: its bytes appear there
            return winfo.reftype, winfo.mem_consumed
        return old_reftype, -winfo.mem_consumed  # something becomes a gradient: its bytes leave its category

    def charge_owner(self, u_type: Any, winfo: Any, old_mem_consumed: int | None, old_reftype: Any) -> None:
        """Activations and temporaries belong to the module running when they are created."""
        owner = self.owners.get(winfo)
        if u_type == _UpdateType.ADD and winfo.reftype in DYNAMIC:
            owner = self.owners[winfo] = self.owner_of(self._mod_tracker.innermost())
            self.charge(owner, winfo.reftype, winfo.mem_consumed)
        elif owner is None:
            if u_type == _UpdateType.REF and winfo.reftype in DYNAMIC:  # re-labelled into an activation
                owner = self.owners[winfo] = self.owner_of(self._mod_tracker.innermost())
                self.charge(owner, winfo.reftype, winfo.mem_consumed)
        elif u_type == _UpdateType.DEL:
            self.charge(self.owners.pop(winfo), winfo.reftype, -winfo.mem_consumed)
        elif u_type == _UpdateType.SIZE:
            self.charge(owner, winfo.reftype, winfo.mem_consumed - old_mem_consumed)
        elif u_type == _UpdateType.REF:
            self.charge(owner, old_reftype, -winfo.mem_consumed)
            if winfo.reftype in DYNAMIC:
                self.charge(owner, winfo.reftype, winfo.mem_consumed)
            else:
                del self.owners[winfo]

    def current(self) -> dict[str, int]:
        """Live bytes by MemTracker category (summed over devices), with the total under "Total"."""
        out: dict[str, int] = {}
        for snap in self._curr_mem_snap.values():
            for key, value in snap.items():
                out[key] = out.get(key, 0) + value
        return out

    def note_peak(self) -> None:
        total = self.live_total
        if self.phase in TRAINING_PHASES and total > self.step_peak:
            self.step_peak = total
        if self.phase is not None and total > self.phase_peaks.get(self.phase, {}).get(TOTAL, -1):
            self.phase_peaks[self.phase] = self.current()

    def _update_peak_stats(self, peak_state: Any) -> None:
        """After every op: each device's peak snapshot (with live bytes by owner there), then phase and step peaks."""
        if self.events is not None:
            self.events.check()
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[TOTAL]:
                self._peak_mem[dev] = snap[TOTAL]
                self._peak_mem_snap[dev] = dict(snap)
                self.peak_by_owner = {owner: dict(cats) for owner, cats in self.live_by_owner.items()}
        self.note_peak()


def by_category(snapshot: dict[Any, int]) -> dict[str, int]:
    cats = dict.fromkeys(CATEGORIES, 0)
    for key, value in snapshot.items():
        if key != TOTAL:
            cats[CATEGORY_OF[key]] += value
    return cats


def split(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to `weights` (integers that sum exactly to total)."""
    whole = sum(weights.values())
    if not whole:
        return dict.fromkeys(weights, 0)
    parts = {k: total * w // whole for k, w in weights.items()}
    largest = max(weights, key=weights.get)
    parts[largest] += total - sum(parts.values())
    return parts


class TensorMemoryTracker:
    """Tracker over MemTracker; `counter` says whether it saw fake or real tensors."""

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, inputs: list, counter: str,
                 owner_of: Callable[[str], str] | None = None, grads_in_buckets: bool = False) -> None:
        self.counter = counter
        self.model, self.owner_of = model, owner_of
        self.tracker = PhasedMemTracker(owner_of, grads_in_buckets)
        for p in model.parameters():
            if not p.requires_grad:  # MemTracker cannot hook a frozen parameter
                self.tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
        self.tracker.track_external(model, optimizer, *inputs)

    def __enter__(self) -> TensorMemoryTracker:
        self.tracker.__enter__()
        if self.tracker.events is not None:
            self.tracker.events.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.__exit__(*exc)

    def mark(self, phase: str) -> None:
        if phase in ("forward", "evaluation"):  # each forward (step, micro-batch, evaluation) is a new MemTracker iteration
            self.tracker.reset_mod_stats()
        self.tracker.phase = phase
        if self.tracker.events is not None:
            self.tracker.events.mark(phase)
        self.tracker.note_peak()

    def end_step(self) -> None:
        self.tracker.step_peaks.append(self.tracker.step_peak)
        self.tracker.step_peak = 0
        self.tracker.phase = None
        if self.tracker.events is not None:
            self.tracker.events.end_step()

    def result(self) -> dict[str, Any]:
        peak = {}
        for snap in self.tracker.get_tracker_snapshot("peak").values():
            for key, value in snap.items():
                peak[key] = peak.get(key, 0) + value
        return {
            "counter": self.counter,
            "peak_bytes": peak.get(TOTAL, 0),
            "by_category": by_category(peak),
            "by_phase": {
                phase: {"peak_bytes": snap.get(TOTAL, 0), "by_category": by_category(snap)}
                for phase, snap in self.tracker.phase_peaks.items()
            },
            "step_peak_bytes": list(self.tracker.step_peaks),
            **({"by_owner": self.attribution(by_category(peak))} if self.owner_of else {}),
        }

    def attribution(self, peak: dict[str, int]) -> dict[str, dict[str, int]]:
        """Peak bytes by owner (backbone, method, head, other) and category; the parts add up to the peak."""
        params: dict[str, int] = dict.fromkeys(OWNERS, 0)
        trainable: dict[str, int] = dict.fromkeys(OWNERS, 0)
        buffers: dict[str, int] = dict.fromkeys(OWNERS, 0)
        for name, p in self.model.named_parameters():
            owner = self.owner_of(name.rpartition(".")[0])
            params[owner] += p.numel() * p.element_size()
            trainable[owner] += p.numel() * p.element_size() if p.requires_grad else 0
        for name, b in self.model.named_buffers():
            buffers[self.owner_of(name.rpartition(".")[0])] += b.numel() * b.element_size()
        out = {owner: dict.fromkeys(CATEGORIES, 0) for owner in OWNERS}
        grads, optimizer = split(peak["grads"], trainable), split(peak["optimizer_state"], trainable)
        for owner in OWNERS:
            dynamic = self.tracker.peak_by_owner.get(owner, {})
            out[owner].update(
                params=params[owner], buffers=buffers[owner], grads=grads[owner], optimizer_state=optimizer[owner],
                activations=dynamic.get("activations", 0), temporaries=dynamic.get("temporaries", 0),
            )
        out["other"]["inputs"] = peak["inputs"]
        return out


@register_tracker("memtracker", {"estimate", "cpu"}, primary=True,
                  description="live tensor bytes by category, phase and owner (PyTorch's MemTracker)")
def memtracker(context: TrackerContext) -> TensorMemoryTracker:
    counter = "memtracker_fake" if context.mode == "estimate" else "memtracker_real"
    return TensorMemoryTracker(context.model, context.optimizer, context.inputs, counter, context.owner_of,
                               context.grads_in_buckets)


def fake_materialise(module: nn.Module, stack: ExitStack) -> None:
    """Give a meta-device module fake storages: enter fake-tensor mode on `stack` (it stays on for the run)
    and allocate every parameter and buffer there. Built on meta first because peft and timm cannot build
    inside fake mode."""
    stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
    # module.to_empty, less its cost: empty_like would first convert each meta tensor to a fake one
    module._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu"))
