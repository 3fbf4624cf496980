"""Policies in robot loops: a real-time controller with latency statistics, and exported samplers.

`load_exported` needs jax and numpy only; `Controller`, which needs the training code, is imported on first use.
`export_onnx` needs the `onnx` extra (jax2onnx), imported only when it runs.
"""

from physgen.control.export import (EXPORT_FORMATS, ExportedPolicy, export_checkpoint, export_onnx, export_policy,
                                    load_exported, sampler_noise)

__all__ = ["EXPORT_FORMATS", "Controller", "ExportedPolicy", "export_checkpoint", "export_onnx", "export_policy",
           "load_exported", "sampler_noise"]


def __getattr__(name: str):
    if name == "Controller":
        from physgen.control.controller import Controller

        return Controller
    raise AttributeError(f"module 'physgen.control' has no attribute {name!r}")
