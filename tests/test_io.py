"""Atomic writes: a file is whole or absent, never half written."""

import pytest
from matplotlib.figure import Figure

from physgen.io import write_figure


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    path = tmp_path / "plot.png"
    write_figure(path, figure)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    class Interrupted(Exception):
        pass

    def fail_midway(file, **options):
        file.write(b"\x89PNG half a figure")
        raise Interrupted

    figure.savefig = fail_midway
    with pytest.raises(Interrupted):
        write_figure(tmp_path / "broken.png", figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # neither the file nor its partial
