"""A full trace's event sizes at another shape, from a trace of only the phases whose memory depends on the shape.

A memory curve's grid needs every event's size at a few shapes (curves.py). Two facts make most of a full trace
redundant there:
- the optimizer phases allocate and free per trainable parameter (its state, the foreach temporaries, the
  gradients that zero_grad drops): the same bytes at every shape of the same run;
- a second training step repeats the first one's forward and backward, event for event and byte for byte (the
  optimizer state it finds allocated belongs to the optimizer phases).

So a grid point traces only one step whose optimizer phase drops the gradients without updating, then the
evaluation (`profile`'s `shape_phases_only`), and `splice` lays those sizes onto a full trace of the same run at
another shape, the reference: every segment of the reference (its events from one phase mark to the next) that
is not an optimizer phase takes the sizes of the traced segment of the same phase and micro-batch (step 2's
forward takes step 1's); the optimizer phases keep the reference's sizes; the teardown (the frees after the last
op, when the run's model and optimizer go) frees what each storage holds. The spliced sizes are refused, with
the reason, unless the reference's steps repeat (event for event and byte for byte, outside the optimizer), each
such segment matches its counterpart event for event (kind and categories), and every storage frees or
relabels exactly the bytes it holds. A curve's check off its grid is spliced the same way (it checks every size
that depends on the shape); the reference itself is a full trace (in `compare`, the run at the asked shape,
which is also the batch curve's check).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .events import END_STEP, FREE, MARK, RELABEL, AllocationEvents, previous_of_serial

MATCHED = ("kind", "category", "old_category")  # what a segment must share with its counterpart
UNCHANGED = "optimizer"  # the phase whose sizes the reference keeps


def teardown(events: AllocationEvents) -> int:
    """Where the trailing frees start: the run's model, optimizer and batch released after its last op."""
    kept = np.flatnonzero(events.numpy("kind") != FREE)
    return int(kept[-1]) + 1 if len(kept) else 0


def segments(events: AllocationEvents) -> list[tuple[tuple[str, int], int, int]]:
    """(key, start, end) of every segment before the teardown: the events before the first mark ("start", 1),
    each phase from its mark, keyed by the phase and its occurrence in the step (micro-batches; an evaluation's
    by its occurrence after the steps), and each step's end ("end_step", 1)."""
    kind, phase, step = events.numpy("kind"), events.numpy("phase"), events.numpy("step")
    bounds = [0, *np.flatnonzero((kind == MARK) | (kind == END_STEP)).tolist(), teardown(events)]
    seen: Counter = Counter()
    out = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        if start == end:
            continue
        if kind[start] == MARK:
            name = events.phases[phase[start]]
            seen[name, None if name == "evaluation" else int(step[start])] += 1
            key = (name, seen[name, None if name == "evaluation" else int(step[start])])
        else:
            key = ("end_step", 1) if kind[start] == END_STEP else ("start", 1)
        out.append((key, start, end))
    return out


def splice(reference: AllocationEvents, traced: AllocationEvents) -> np.ndarray | str:
    """One size per event of `reference`, at the shape `traced` was traced at (see the module docstring), or
    why they cannot be spliced."""
    theirs: dict[tuple[str, int], tuple[int, int]] = {}
    for key, start, end in segments(traced):
        if key in theirs:
            return f"the traced phases repeat their {key[0]} segment (more than one step traced)"
        theirs[key] = (start, end)
    sizes = reference.numpy("nbytes").copy()
    traced_sizes = traced.numpy("nbytes")
    first: dict[tuple[str, int], tuple[int, int]] = {}  # the reference's first segment of each key
    for key, start, end in segments(reference):
        if key[0] == UNCHANGED:
            continue
        s, e = first.setdefault(key, (start, end))
        if e - s != end - start or any(not np.array_equal(reference.numpy(f)[start:end], reference.numpy(f)[s:e])
                                       for f in (*MATCHED, "nbytes")):
            return f"the full trace's steps differ in their {key[0]} segment {key[1]}"
        if key not in theirs:
            return f"the traced phases have no {key[0]} segment {key[1]}"
        s, e = theirs[key]
        if e - s != end - start or any(not np.array_equal(reference.numpy(f)[start:end], traced.numpy(f)[s:e])
                                       for f in MATCHED):
            return f"the {key[0]} segment {key[1]} runs other events than the full trace's"
        sizes[start:end] = traced_sizes[s:e]
    kind = reference.numpy("kind")
    previous = previous_of_serial(reference.numpy("serial"), kind <= RELABEL)
    tail = np.arange(teardown(reference), len(kind))
    sizes[tail] = sizes[previous[tail]]  # a teardown free releases what its storage holds (set before it)
    wrong = np.flatnonzero(((kind == FREE) | (kind == RELABEL)) & (sizes != sizes[previous]))
    if len(wrong):
        i = int(wrong[0])
        return (f"storage {int(reference.numpy('serial')[i])} would release {int(sizes[i])} bytes, "
                f"holding {int(sizes[previous[i]])}: its bytes depend on the shape across an optimizer phase")
    return sizes
