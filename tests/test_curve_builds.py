"""How compare hands out its curve builds (comparison/curve_builds.py): a method's run at the asked shape, then each
of its lines as a task of its own, a made run's lines first and full fine-tuning's before all; a task that fails
fails its method only. A stand-in pool runs the tasks one at a time, in the order they were handed out."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from unipt_bench.comparison import curve_builds
from unipt_bench.comparison.shape_memory import AskedRun, LinePart

from .conftest import make_spec


class StepPool:
    """A pool whose tasks run when the test says so, in the order they were submitted."""

    def __init__(self, *args, **kwargs) -> None:
        self.queue: list[tuple[object, Future]] = []
        self.order: list[tuple[str, ...]] = []

    def submit(self, call) -> Future:
        future: Future = Future()
        self.queue.append((call, future))
        return future

    def run_all(self) -> None:
        while self.queue:
            call, future = self.queue.pop(0)
            try:
                future.set_result(call())
            except Exception as exc:  # noqa: BLE001
                future.set_exception(exc)

    def shutdown(self, **kwargs) -> None:
        pass


@pytest.fixture
def pool(monkeypatch):
    made = StepPool()
    monkeypatch.setattr(curve_builds, "ProcessPoolExecutor", lambda *args, **kwargs: made)

    def ask(spec_data, options):
        made.order.append(("ask", spec_data["label"]))
        status = "not_applicable" if spec_data["label"] == "skipped" else "ok"
        return AskedRun({"status": status, "message": "does not apply"}, traced=None, seconds=1.0)

    def line_curve(spec_data, axes, limit, reference):
        made.order.append(("line", spec_data["label"], axes[0]))
        if spec_data["label"] == "broken" and axes[0] == "batch":
            raise RuntimeError("the process died")
        return LinePart({"axes": axes}, "", traces=3, seconds=2.0)

    monkeypatch.setattr(curve_builds, "ask", ask)
    monkeypatch.setattr(curve_builds, "line_curve", line_curve)
    return made


def test_a_methods_lines_run_as_soon_as_its_run_is_made_full_fine_tuning_first(pool) -> None:
    specs = {label: make_spec(method) for label, method in (("adapter", "adapter"), ("full", "full"),
                                                            ("lora", "lora"))}
    for label, spec in specs.items():
        spec.label = label
    lines = [(["batch"], None), (["a.seq_len"], 512)]
    builds = curve_builds.CurveBuilds(specs, lines, {}, jobs=2, isolate=True)
    pool.run_all()
    assert pool.order == [("ask", "full"), ("ask", "adapter"), ("line", "full", "batch"), ("line", "full", "a.seq_len"),
                          ("line", "adapter", "batch"), ("line", "adapter", "a.seq_len"), ("ask", "lora"),
                          ("line", "lora", "batch"), ("line", "lora", "a.seq_len")]
    built = builds.get("adapter")
    assert built.curves == [{"axes": ["batch"]}, {"axes": ["a.seq_len"]}]
    assert (built.traces, built.seconds, built.why) == (7, 5.0, "")


def test_a_failed_task_fails_its_method_only_and_a_run_that_does_not_apply_builds_no_line(pool) -> None:
    specs = {label: make_spec("lora") for label in ("full", "broken", "skipped", "fine")}
    for label, spec in specs.items():
        spec.label = label
    builds = curve_builds.CurveBuilds(specs, [(["batch"], None), (["a.seq_len"], 512)], {}, jobs=1, isolate=True)
    pool.run_all()
    with pytest.raises(RuntimeError, match="the process died"):
        builds.get("broken")
    skipped = builds.get("skipped")
    assert (skipped.curves, skipped.traces, skipped.why) == ([], 1, "does not apply")
    assert ("line", "skipped", "batch") not in pool.order
    assert len(builds.get("fine").curves) == 2 and len(builds.get("full").curves) == 2


def test_a_builder_ends_when_the_comparison_process_is_gone() -> None:
    """A killed comparison leaves no builder waiting for a task (and so no server it forked from)."""
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    builder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                                "from unipt_bench.comparison.curve_builds import exit_with\n"
                                f"exit_with({parent.pid})\n"
                                "time.sleep(60)\n"
                                "sys.exit(0)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            builder.wait(timeout=2)  # its comparison lives: it waits
        parent.kill()
        parent.wait()
        assert builder.wait(timeout=30) == 1
    finally:
        for process in (parent, builder):
            process.kill()
