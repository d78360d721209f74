"""The FSM figures of :mod:`vfio_user_mig.model.plot` (the functions the
CLI and the notebooks share): every figure has a title, its legend or labelled axes, and is
drawn from the model's data, not empty."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import FancyArrowPatch

from vfio_user_mig.model import ALL_CAPS, State, caps_label, transition_graph
from vfio_user_mig.model.paths import path_table
from vfio_user_mig.model.plot import draw_graph, draw_matrix
from vfio_user_mig.model.render import path_cell, short_name

CAPS = pytest.mark.parametrize("caps", ALL_CAPS, ids=[caps_label(c) for c in ALL_CAPS])


@pytest.fixture
def new_ax() -> Iterator[Any]:
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def _pixels_vary(fig: Any) -> bool:
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    return bool(pixels.std() > 0)


@CAPS
@pytest.mark.parametrize("own_axes", [False, True], ids=["new-figure", "given-axes"])
def test_graph_figure(caps: Any, own_axes: bool, new_ax: Any) -> None:
    fig = draw_graph(caps, new_ax if own_axes else None)
    try:
        ax = new_ax if own_axes else fig.axes[0]
        assert fig is ax.figure
        graph = transition_graph(caps)
        # Title: names the capability set and counts states and arcs from the graph.
        title = ax.get_title()
        assert caps_label(caps) in title
        assert f"{graph.number_of_nodes()} states" in title
        assert f"{graph.number_of_edges()} direct arcs" in title
        # Legend: present, one entry per kind of mark.
        legend = ax.get_legend()
        assert legend is not None
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(labels) == 6 and all(labels)
        assert "saving group" in labels and "DEVICE_RESET" in labels
        # From data: one box per state, one arrow per direct arc plus the reset arc.
        assert sorted(t.get_text() for t in ax.texts) == sorted(s.name for s in State)
        arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == graph.number_of_edges() + 1
        assert _pixels_vary(fig)
    finally:
        plt.close(fig)


@CAPS
@pytest.mark.parametrize("own_axes", [False, True], ids=["new-figure", "given-axes"])
def test_matrix_figure(caps: Any, own_axes: bool, new_ax: Any) -> None:
    fig = draw_matrix(caps, new_ax if own_axes else None)
    try:
        ax = new_ax if own_axes else fig.axes[0]
        table = path_table(caps)
        states = list(table.supported)
        n = len(states)
        # Title and labelled axes; the colour bar (the matrix's legend) names its quantity.
        assert caps_label(caps) in ax.get_title()
        assert ax.get_xlabel() == "target state"
        assert ax.get_ylabel() == "current state"
        assert [t.get_text() for t in ax.get_xticklabels()] == [short_name(s) for s in states]
        assert [t.get_text() for t in ax.get_yticklabels()] == [short_name(s) for s in states]
        colorbars = [a for a in fig.axes if a is not ax]
        assert len(colorbars) == 1
        assert colorbars[0].get_ylabel() == "number of direct arcs"
        # From data: the image holds the path lengths (NaN = refused), a text per cell.
        (image,) = ax.get_images()
        grid = np.ma.filled(image.get_array(), np.nan)
        assert grid.shape == (n, n)
        for i, cur in enumerate(states):
            for j, target in enumerate(states):
                if (cur, target) in table.blocked:
                    assert math.isnan(grid[i, j])
                else:
                    assert grid[i, j] == len(table.paths[(cur, target)]) - 1
        cells = [t.get_text().replace("\n", "") for t in ax.texts]
        assert cells == [path_cell(c, t, caps) for c in states for t in states]
        assert np.nanmax(grid) > 0
        assert _pixels_vary(fig)
    finally:
        plt.close(fig)
