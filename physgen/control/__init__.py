"""Policies in robot loops: a real-time controller with latency statistics, and exported samplers.

`load_exported` needs jax and numpy only; `Controller`, which needs the training code, is imported on first use.
"""

from physgen.control.export import ExportedPolicy, export_checkpoint, export_policy, load_exported

__all__ = ["Controller", "ExportedPolicy", "export_checkpoint", "export_policy", "load_exported"]


def __getattr__(name: str):
    if name == "Controller":
        from physgen.control.controller import Controller

        return Controller
    raise AttributeError(f"module 'physgen.control' has no attribute {name!r}")
