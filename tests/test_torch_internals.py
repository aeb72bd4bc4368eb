"""The private PyTorch members that memory/estimate.py relies on, checked by name, signature and use.

estimate.py subclasses MemTracker from torch.distributed._tools.mem_tracker (a private module) and
overrides, wraps, replaces or reads members that are no public API. pyproject.toml bounds torch to
the versions tested; when a release changes one of these members, these tests name it and say what
changed, instead of the estimates going silently wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import MutableMapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed._tools import mem_tracker
from torch.distributed._tools.mod_tracker import ModTracker

from unipt_bench.memory import estimate
from unipt_bench.memory.estimate import TensorMemoryTracker, cuda_allocator_blocks


def changed(member: str, what: str) -> str:
    return f"torch {torch.__version__} changed private member {member}: {what}"


# (owner, member, the parameters estimate.py counts on) and how estimate.py uses the member
SIGNATURES = [
    (mem_tracker.MemTracker, "__init__", ["self"]),  # called with no arguments by PhasedMemTracker
    (mem_tracker.MemTracker, "_update_snap", ["self", "u_type", "winfo", "old_mem_consumed", "old_reftype"]),
    (mem_tracker.MemTracker, "_update_peak_stats", ["self", "peak_state"]),  # overridden
    (mem_tracker.MemTracker, "track_external", ["self", "external"]),
    (mem_tracker.MemTracker, "reset_mod_stats", ["self"]),
    (mem_tracker.MemTracker, "get_tracker_snapshot", ["self", "type"]),
    (ModTracker, "_fw_pre_hook", ["self", "mod", "input"]),  # overridden by OrderedModTracker
    (ModTracker, "_get_mod_name", ["self", "mod"]),  # called by OrderedModTracker._fw_pre_hook
    (ModTracker, "_get_append_fn", ["self", "w_mod", "name", "is_bw"]),  # overridden (entry order)
    (ModTracker, "_get_pop_fn", ["self", "w_mod", "name", "is_bw"]),  # called by OrderedModTracker._fw_pre_hook
    (ModTracker, "_fw_post_hook", ["self", "mod", "input", "output"]),  # overridden by OrderedModTracker
    (mem_tracker._WeakRefInfo, "__init__", ["self", "size", "element_size", "device", "reftype"]),
    (mem_tracker._WeakRefInfo, "_calculate_mem_consumed", ["self"]),  # replaced by cuda_allocator_blocks
    (mem_tracker._ModMemStats, "__init__", ["self", "mod_fqn"]),
]


@pytest.mark.parametrize(("owner", "name", "parameters"), SIGNATURES,
                         ids=[f"{owner.__name__}.{name}" for owner, name, _ in SIGNATURES])
def test_private_member_keeps_its_signature(owner: Any, name: str, parameters: list[str]) -> None:
    member = f"{owner.__name__}.{name}"
    assert hasattr(owner, name), changed(member, "it no longer exists")
    found = list(inspect.signature(getattr(owner, name)).parameters)
    assert found == parameters, changed(member, f"its parameters are now {found}, estimate.py expects {parameters}")


@pytest.mark.parametrize(("enum", "members"), [
    (mem_tracker._MemRefType, {"PARAM", "BUFFER", "GRAD", "ACT", "TEMP", "OPT", "OTH"}),  # estimate.CATEGORY_OF
    (mem_tracker._UpdateType, {"ADD", "DEL", "REF", "SIZE"}),  # the update kinds _update_snap handles
])
def test_private_enums_keep_their_members(enum: Any, members: set[str]) -> None:
    found = set(enum.__members__)
    assert found == members, changed(f"mem_tracker.{enum.__name__}", f"its members are now {sorted(found)}")


def test_snapshots_keep_their_total_key() -> None:
    assert mem_tracker._TOTAL_KEY == estimate.TOTAL, changed(
        "mem_tracker._TOTAL_KEY", f"it is now {mem_tracker._TOTAL_KEY!r}, estimate.TOTAL is {estimate.TOTAL!r}")


def test_tracker_state_keeps_the_attributes_estimate_reads() -> None:
    """Instance attributes set in __init__ that PhasedMemTracker reads or fills."""
    tracker = mem_tracker.MemTracker()
    for name, kind in (("_mod_tracker", ModTracker), ("_curr_mem_snap", dict), ("_peak_mem", dict),
                       ("_peak_mem_snap", dict), ("memory_tracking", MutableMapping),
                       ("_param_to_grad_hook_handles", MutableMapping)):
        assert isinstance(getattr(tracker, name, None), kind), changed(
            f"MemTracker.{name}", f"no longer a {kind.__name__} set by __init__")
    assert isinstance(getattr(tracker._mod_tracker, "parents", None), set), changed(
        "ModTracker.parents", "no longer the set of running module names")
    for name, kind in (("_post_bw_callbacks_to_enqueue", list), ("_user_pre_fw_hook", type(None))):
        assert isinstance(getattr(tracker._mod_tracker, name, 0), kind), changed(
            f"ModTracker.{name}", f"no longer a {kind.__name__} set by __init__ (OrderedModTracker._fw_pre_hook uses it)")
    stats = mem_tracker._ModMemStats("m")
    for name in ("mod_fqn", "local_peak", "snapshots"):
        assert hasattr(stats, name), changed(f"_ModMemStats.{name}", "no longer set by __init__")
    info = mem_tracker._WeakRefInfo(3, 4, torch.device("cpu"), mem_tracker._MemRefType.ACT)
    for name in ("size", "element_size", "reftype", "mem_consumed"):
        assert hasattr(info, name), changed(f"_WeakRefInfo.{name}", "no longer set by __init__")


def test_mem_tracker_still_calls_what_estimate_overrides(monkeypatch) -> None:
    """Overriding a member only works while MemTracker calls it: one tracked training step and one
    no_grad forward, with a frozen parameter, must go through every overridden or replaced member."""
    called: set[str] = set()

    def record(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            called.add(f"{owner.__name__}.{name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in ((estimate.PhasedMemTracker, "_update_snap"), (estimate.PhasedMemTracker, "_update_peak_stats"),
                        (ModTracker, "_get_append_fn"), (ModTracker, "_get_pop_fn"),
                        (estimate.OrderedModTracker, "_fw_pre_hook"), (estimate.OrderedModTracker, "_fw_post_hook")):
        record(owner, name)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # needs the no-op grad hook handles in _param_to_grad_hook_handles
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    inputs = torch.randn(3, 4)
    with cuda_allocator_blocks(), TensorMemoryTracker(model, optimizer, [inputs], "real",
                                                      owner_of=lambda path: "head") as tracker:
        tracker.mark("forward")
        loss = model(inputs).sum()
        tracker.mark("backward")
        loss.backward()
        tracker.mark("optimizer")
        optimizer.step()
        tracker.end_step()
        with torch.no_grad():
            tracker.mark("evaluation")
            model(inputs)
    expected = {"PhasedMemTracker._update_snap", "PhasedMemTracker._update_peak_stats",
                "ModTracker._get_append_fn", "ModTracker._get_pop_fn", "OrderedModTracker._fw_pre_hook",
                "OrderedModTracker._fw_post_hook"}
    for member in sorted(expected - called):
        member = member.replace("PhasedMemTracker", "MemTracker").replace("OrderedModTracker", "ModTracker")
        pytest.fail(changed(member, "MemTracker no longer calls it"))
    result = tracker.result()
    assert result["peak_bytes"] % estimate.CUDA_BLOCK == 0 and result["peak_bytes"] > 0, changed(
        "_WeakRefInfo._calculate_mem_consumed", "storages no longer get their size from it")
    assert result["by_owner"]["head"]["activations"] > 0, changed(
        "MemTracker._update_snap", "activations no longer reach it as they are created")
