"""The API reference's Sphinx configuration (docs/api/conf.py) on a one-page probe: a reference
reached through a package re-export resolves to the documented definition, and a reference to a
package name that does not exist fails the build (the whole reference is built by .ci/run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")

CONF = Path(__file__).resolve().parents[2] / "docs" / "api"

PAGE = """Probe
=====

Through the package: :class:`vfio_user_mig.model.State`; where it is defined:
:class:`~vfio_user_mig.model.states.MigrationCaps`. {extra}

.. automodule:: vfio_user_mig.model.states
   :members:
"""


def build(tmp_path: Path, extra: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.rst").write_text(PAGE.format(extra=extra))
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q",
                           "-b", "html", "-c", str(CONF), str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=False)


def test_reexported_names_resolve(tmp_path: Path) -> None:
    done = build(tmp_path, "")
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "out" / "index.html").read_text()
    assert 'href="#vfio_user_mig.model.states.State"' in html


def test_a_name_that_does_not_exist_fails_the_build(tmp_path: Path) -> None:
    done = build(tmp_path, ":func:`vfio_user_mig.model.no_such_function`")
    assert done.returncode != 0
    assert "vfio_user_mig.model.no_such_function" in done.stderr
