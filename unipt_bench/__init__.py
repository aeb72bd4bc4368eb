"""unipt-bench: memory-profiling benchmarks for parameter-efficient transfer learning.

Reproduces and extends UniPT (Diao et al., CVPR 2024, arXiv 2308.14316): every PETL method on every
backbone, with trainable parameters, peak memory by category and phase, and task accuracy.
"""

__version__ = "0.1.0"

from .comparison import compare  # noqa: E402  (the version above is read by the package's own modules)

__all__ = ["compare"]
