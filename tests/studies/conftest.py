"""Shared fixtures of the study tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import matplotlib.pyplot as plt
import pytest


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """A list the test appends its figures to; they are closed afterwards."""
    figs: list[Any] = []
    yield figs
    for fig in figs:
        plt.close(fig)
