"""Tables, pictures and the CLI commands of the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_user_mig.cli import main
from vfio_user_mig.model import ALL_CAPS, VFIO_USER_CAPS, transition_graph
from vfio_user_mig.model.render import format_matrix, path_matrix, to_dot, to_mermaid


def test_importing_the_model_does_not_import_matplotlib() -> None:
    code = "import sys, vfio_user_mig.model, vfio_user_mig.model.render; " \
           "print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("caps", ALL_CAPS, ids=lambda c: str(int(c)))
def test_text_formats_carry_every_arc(caps: int) -> None:
    mermaid, dot = to_mermaid(caps), to_dot(caps)
    for u, v in transition_graph(caps).edges:
        assert f"{u.name} --> {v.name}:" in mermaid
        assert f"{u.name} -> {v.name} " in dot
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")


def test_matrix_for_vfio_user_caps() -> None:
    text = format_matrix(VFIO_USER_CAPS)
    assert "blocked: STOP_COPY->PRE_COPY" in text
    data = path_matrix(VFIO_USER_CAPS)["matrix"]
    assert data["RESUMING"]["PRE_COPY"] == ["RESUMING", "STOP", "RUNNING", "PRE_COPY"]
    assert data["STOP_COPY"]["PRE_COPY"] == {"errno": 22, "reason": "blocked-arc"}


def test_cli_table_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tables"]) == 4


def test_cli_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["path", "RUNNING", "STOP_COPY", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == ["RUNNING", "STOP", "STOP_COPY"]
    assert len(info["arcs"]) == 2
    assert main(["path", "STOP_COPY", "PRE_COPY"]) == 1
    assert "errno 22" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_cli_graph_writes_a_picture(tmp_path: Path, suffix: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"fsm.{suffix}"
    assert main(["graph", "--caps", "all", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["output"] == str(out) and len(info["arcs"]) == 15
    assert out.stat().st_size > 10_000


def test_cli_graph_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("stateDiagram-v2")


def test_matrix_picture_has_content() -> None:
    from vfio_user_mig.model.plot import draw_matrix

    fig = draw_matrix(ALL_CAPS[-1])
    ax = fig.axes[0]
    assert len(ax.texts) == 49 and ax.get_xlabel() == "target state"
