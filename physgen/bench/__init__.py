"""The benchmark runner: protocol, multi-seed training and evaluation, statistics, failure categories, report, videos."""

from physgen.bench.protocol import BUDGETS, METHODS
from physgen.bench.runner import run_bench

__all__ = ["BUDGETS", "METHODS", "run_bench"]
