"""Results as a pandas DataFrame, for notebooks: `load_results("flickr30k")`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .results import ResultStore


def load_results(suite: str | None = None, root: str | Path = "results") -> pd.DataFrame:
    """The newest result of every run (of one suite, or of every suite in the store), one row each:
    the columns of `unipt-bench results --format csv`, bytes and raw counts, nullable integer dtypes."""
    store = ResultStore(root)
    suites = [suite] if suite else store.suites()
    rows = [r.row() for name in suites for r in sorted(store.latest(name).values(),
                                                         key=lambda r: r.display_order)]
    return pd.DataFrame(rows).convert_dtypes()
