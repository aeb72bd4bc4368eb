"""HTML reports: the paper's tables beside the measured ones, memory breakdowns, trade-offs, provenance."""
