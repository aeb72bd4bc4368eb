"""Benchmark: rendering a report of 500 results (25 configurations x 20 methods, every figure); goal < 5 s.
Run: python -m pytest benchmarks --benchmark-only
"""

from __future__ import annotations

import copy

from unipt_bench.report.render import render_report
from unipt_bench.results import RunResult
from unipt_bench.runner import execute
from unipt_bench.suite_file import load_suite


def five_hundred_results() -> list[RunResult]:
    (spec,) = [s for s in load_suite("smoke").with_mode("estimate") if s.key == "bert/unipt/estimate"]
    template = RunResult(**execute({**spec.to_dict(), "paper": "table5-bert"}))
    results = []
    for config in range(25):
        for method in range(20):
            r = copy.deepcopy(template)
            r.spec = {**r.spec, "config": f"config-{config}", "label": f"method-{method}", "order": config * 20 + method}
            r.memory["memtracker_fake"]["peak_bytes"] += 1000 * method
            results.append(r)
    return results


def test_render_500_results(benchmark) -> None:
    results = five_hundred_results()
    html = benchmark.pedantic(lambda: render_report("big", results, "results"), rounds=3, iterations=1)
    assert html.count('class="run"') == 500
