"""Re-execute every notebook in this directory in place, so the committed outputs are fresh.

Usage: ``python notebooks/build.py [NOTEBOOK ...]`` (all ``notebooks/*.ipynb`` by default).

The test suite (``tests/notebooks``) executes the notebooks with :func:`execute`, so what this
script writes is exactly what the tests check. Notebooks run on the ``python3`` kernel of the
interpreter running this script (a private kernel spec is installed in a temporary directory
when needed), with ``MPLBACKEND=Agg``; notebooks draw inline with ``%matplotlib inline``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "python3"
CELL_TIMEOUT = 60  # seconds, per cell


def notebooks() -> list[Path]:
    """Every notebook of the project, in name order."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _spec_uses_this_interpreter(argv: Sequence[str]) -> bool:
    # jupyter_client replaces a bare "python"/"python3"/"python3.X" with sys.executable.
    names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}
    if not argv:
        return False
    if argv[0] in names:
        return True
    with contextlib.suppress(OSError):
        return Path(argv[0]).resolve() == Path(sys.executable).resolve()
    return False


@contextlib.contextmanager
def kernel_environment(*, private: bool = False) -> Iterator[None]:
    """Make sure kernel ``python3`` exists and runs this interpreter; set ``MPLBACKEND=Agg``.

    When the kernel spec is missing (or belongs to another interpreter), or ``private`` is
    true, ipykernel's own spec is installed into a temporary prefix put first on
    ``JUPYTER_PATH`` (nothing is written to the environment's prefix or the user's home).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    saved = {key: os.environ.get(key) for key in ("MPLBACKEND", "JUPYTER_PATH")}
    os.environ["MPLBACKEND"] = "Agg"
    try:
        with tempfile.TemporaryDirectory(prefix="vfio-user-mig-kernel-") as tmp:
            try:
                argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
            except NoSuchKernel:
                argv = []
            if private or not _spec_uses_this_interpreter(argv):
                from ipykernel.kernelspec import install

                install(prefix=tmp, kernel_name=KERNEL_NAME)
                share = str(Path(tmp) / "share" / "jupyter")
                os.environ["JUPYTER_PATH"] = os.pathsep.join(
                    p for p in (share, saved["JUPYTER_PATH"]) if p)
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(path: Path, timeout: int = CELL_TIMEOUT) -> Any:
    """Execute the notebook at ``path`` (cwd = its directory) and return it with its outputs.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell. Call inside
    :func:`kernel_environment`.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL_NAME, record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return nb


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a).resolve() for a in args] or notebooks()
    with kernel_environment():
        for path in paths:
            start = time.perf_counter()
            nb = execute(path)
            nbformat.write(nb, path)
            print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
