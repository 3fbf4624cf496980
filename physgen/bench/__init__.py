"""The benchmark runner: protocol, multi-seed training and evaluation, statistics, failure categories, report, videos."""

from physgen.bench.method import Job, Method
from physgen.bench.protocol import BUDGETS
from physgen.bench.registry import REGISTRY, register_method
from physgen.bench.runner import run_bench

__all__ = ["BUDGETS", "Job", "Method", "REGISTRY", "register_method", "run_bench"]
