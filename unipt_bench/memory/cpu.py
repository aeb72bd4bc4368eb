"""Process resident memory (RSS) around a CPU run: what the operating system saw, allocator caches included."""

from __future__ import annotations

import resource
import sys
from typing import Any

from .registry import TrackerContext, register_tracker


def max_rss_bytes() -> int:
    """Peak RSS of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class RssTracker:
    """Peak RSS before and after the tracked steps; the difference is what the steps added."""

    counter = "rss"
    after: int | None = None  # set on exit; a result read before then reports the peak so far

    def __enter__(self) -> RssTracker:
        self.before = max_rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = max_rss_bytes()

    def mark(self, phase: str) -> None:
        pass

    def end_step(self) -> None:
        pass

    def result(self) -> dict[str, Any]:
        return {
            "counter": "rss",
            "source": "getrusage(RUSAGE_SELF).ru_maxrss",
            "peak_bytes": self.after if self.after is not None else max_rss_bytes(),
            "peak_before_steps_bytes": self.before,
        }


@register_tracker("rss", {"cpu"}, description="the process's peak resident memory (getrusage)", default=True)
def rss(context: TrackerContext) -> RssTracker:
    return RssTracker()
