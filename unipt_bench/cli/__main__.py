"""`python -m unipt_bench.cli`: the same as the `unipt-bench` command."""

from . import main

main()
