"""A physgen task plugin: `pendulum`, Gymnasium's InvertedDoublePendulum-v5 with an LQR expert.

physgen finds `TASK` through the entry point in group `physgen.tasks` (pyproject.toml), or as
`physgen_pendulum:TASK` when this folder is importable.
"""

from physgen_pendulum.task import TASK

__all__ = ["TASK"]
