"""Pictures of the FSM with matplotlib (imported lazily: ``vfio_user_mig.model`` never imports
this module, so importing the model does not import matplotlib).

Every picture is drawn from :func:`~vfio_user_mig.model.graph.transition_graph`: fixed node
positions, the saving group coloured, opposite arcs curved apart, states a capability set lacks
greyed, the DEVICE_RESET way out of ERROR dashed, and a legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vfio_user_mig.model.graph import (
    RESET_TARGET,
    STATES,
    caps_label,
    normalize_caps,
    transition_graph,
)
from vfio_user_mig.model.render import path_cell, short_name
from vfio_user_mig.model.states import MigrationCaps, State

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SAVING_COLOR = "#f6c89f"
NORMAL_COLOR = "#dbe9f6"
ERROR_COLOR = "#f4a6a6"
ABSENT_COLOR = "#eeeeee"


def pyplot() -> Any:
    """matplotlib.pyplot, switched to Agg unless an inline or Agg backend is already active."""
    import matplotlib

    interactive = ("agg", "inline", "module://matplotlib_inline.backend_inline")
    if matplotlib.get_backend().lower() not in interactive:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def draw_graph(caps: MigrationCaps | int, ax: Axes | None = None) -> Figure:
    """Draw the FSM of ``caps`` on ``ax`` (a new figure when None) and return the figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch

    plt = pyplot()
    value = normalize_caps(caps)
    graph = transition_graph(value)
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 7.2))
    else:
        fig = ax.figure
    box = {"boxstyle": "round,pad=0.45", "linewidth": 1.2}
    for info in STATES:
        x, y = info.pos
        present = info.state in graph
        if info.state is State.ERROR:
            color = ERROR_COLOR
        elif not present:
            color = ABSENT_COLOR
        else:
            color = SAVING_COLOR if info.saving else NORMAL_COLOR
        ax.text(x, y, info.state.name, ha="center", va="center", fontsize=11,
                color="black" if present else "#aaaaaa", zorder=3,
                bbox={**box, "facecolor": color, "edgecolor": "#555555" if present else "#cccccc"})
    for u, v in graph.edges:
        rad = 0.18 if graph.has_edge(v, u) else 0.0
        ax.add_patch(FancyArrowPatch(
            graph.nodes[u]["pos"], graph.nodes[v]["pos"], arrowstyle="-|>", mutation_scale=16,
            connectionstyle=f"arc3,rad={rad}", shrinkA=34, shrinkB=34, color="#333333",
            linewidth=1.4, zorder=2))
    ax.add_patch(FancyArrowPatch(
        graph.nodes[State.ERROR]["pos"], graph.nodes[RESET_TARGET]["pos"], arrowstyle="-|>",
        mutation_scale=14, connectionstyle="arc3,rad=0.0", shrinkA=36, shrinkB=40,
        color="#a00000", linestyle="--", linewidth=1.1, zorder=1))
    ax.set_xlim(-3.0, 5.9)
    ax.set_ylim(-2.3, 3.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"vfio-user migration FSM, capabilities {caps_label(value)}: "
                 f"{graph.number_of_nodes()} states, {graph.number_of_edges()} direct arcs")
    ax.legend(handles=[
        Patch(facecolor=NORMAL_COLOR, edgecolor="#555555", label="state"),
        Patch(facecolor=SAVING_COLOR, edgecolor="#555555", label="saving group"),
        Patch(facecolor=ABSENT_COLOR, edgecolor="#cccccc", label="not supported by these caps"),
        Patch(facecolor=ERROR_COLOR, edgecolor="#555555", label="ERROR (never requested)"),
        Line2D([], [], color="#333333", label="direct arc (Mealy action on it)"),
        Line2D([], [], color="#a00000", linestyle="--", label="DEVICE_RESET"),
    ], loc="lower right", fontsize=8, frameon=False)
    return cast("Figure", fig)


def draw_matrix(caps: MigrationCaps | int, ax: Axes | None = None) -> Figure:
    """The cur x target complex-transition matrix as a picture: colour = number of arcs,
    text = interior states; refused cells in red."""
    plt = pyplot()
    value = normalize_caps(caps)
    graph = transition_graph(value)
    states = [s for s in State if s in graph and s is not State.ERROR]
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.3 * len(states) + 2, 1.0 * len(states) + 1.5))
    else:
        fig = ax.figure
    from vfio_user_mig.model.errors import InvalidTransition
    from vfio_user_mig.model.paths import transition_path

    grid: list[list[float]] = []
    for cur in states:
        row: list[float] = []
        for target in states:
            try:
                row.append(float(len(transition_path(cur, target, value)) - 1))
            except InvalidTransition:
                row.append(float("nan"))
        grid.append(row)
    cmap = plt.get_cmap("Blues").with_extremes(bad=ERROR_COLOR)
    image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=5)
    for i, cur in enumerate(states):
        for j, target in enumerate(states):
            ax.text(j, i, path_cell(cur, target, value).replace(">", ">\n"), ha="center",
                    va="center", fontsize=8)
    ax.set_xticks(range(len(states)), [short_name(s) for s in states])
    ax.set_yticks(range(len(states)), [short_name(s) for s in states])
    ax.set_xlabel("target state")
    ax.set_ylabel("current state")
    ax.set_title(f"Complex transitions [{caps_label(value)}]: arcs walked (red = EINVAL)")
    from matplotlib.patches import Patch

    fig.colorbar(image, ax=ax, label="number of direct arcs")
    ax.legend(handles=[Patch(facecolor=ERROR_COLOR, label="refused (EINVAL)")],
              loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=8, frameon=False)
    return cast("Figure", fig)


def save_graph(caps: MigrationCaps | int, path: str | Path) -> Path:
    """Draw the FSM of ``caps`` and save it (format from the suffix: .png, .svg, .pdf)."""
    plt = pyplot()
    out = Path(path)
    fig = draw_graph(caps)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


__all__ = ["draw_graph", "draw_matrix", "save_graph"]
