"""The catalogue of planted server defects (mutants) the checker must catch.

Each :class:`Mutant` is one realistic defect a server author writes, planted by
:attr:`Mutant.plant` into a freshly hosted device (:mod:`.patches`: instance patches of the
core's handlers, gates, dispatch or output, or of the device's methods). It names the groups
whose checks must kill it (the harness runs only those, with ``--only``), the finding kind it
is meant to produce (``dirty`` is a ``data`` finding about dirty pages), the device and profile
it needs and, for defects only exploration finds, the pinned random run ``(N, seed)``.
``needs`` names the check still being written by another part of the checker: such a mutant is
a strict expected failure until that check lands.

The mutants are grouped by the server area they break: :mod:`.mutants_fsm` (migration state),
:mod:`.mutants_wire` (gating, features, framing, replies, connections) and
:mod:`.mutants_data` (DMA and dirty logging, migration data, save and restore).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vfio_user_mig.simulator.server.hosting import HostedDevice

#: The finding kinds a mutant may be meant to produce (``findings.Kind`` values, and ``dirty``
#: for a ``data`` finding about dirty pages).
KINDS = ("errno", "state", "data", "hang", "close", "dirty", "reply", "crash")
#: The groups the catalogue must cover together.
GROUPS = ("fsm", "gating", "feature", "dma", "migdata", "reset", "disconnect", "malformed")


@dataclass(frozen=True)
class Mutant:
    """One planted defect (module docstring)."""

    name: str
    description: str
    groups: tuple[str, ...]
    kind: str
    plant: Callable[[HostedDevice], None]
    device: str = "migdev"
    profile: str | None = None
    #: A pinned random exploration ``(N, seed)`` instead of the groups' suite.
    random: tuple[int, int] | None = None
    #: The check that will kill it, still being built elsewhere (strict xfail until then).
    needs: str | None = None
    #: Serve one device on a UNIX path across connections (``--socket``), not one per sequence.
    reconnect: bool = False
    #: The checker's reply timeout (short for mutants that hang).
    timeout: float = 1.0

    @property
    def finding_kind(self) -> str:
        """The :class:`~vfio_user_mig.check.findings.Kind` value of the finding expected."""
        return "data" if self.kind == "dirty" else self.kind


MUTANTS: list[Mutant] = []


def mutant(name: str, description: str, groups: str | tuple[str, ...], kind: str, *,
           device: str = "migdev", profile: str | None = None,
           random: tuple[int, int] | None = None, needs: str | None = None,
           reconnect: bool = False, timeout: float = 1.0
           ) -> Callable[[Callable[[HostedDevice], None]], Callable[[HostedDevice], None]]:
    """Register the decorated planting function as a mutant."""
    assert kind in KINDS, kind
    names = (groups,) if isinstance(groups, str) else groups
    assert set(names) <= set(GROUPS) | {"roundtrip"}, names

    def register(plant: Callable[[HostedDevice], None]) -> Callable[[HostedDevice], None]:
        assert all(m.name != name for m in MUTANTS), name
        MUTANTS.append(Mutant(name, description, names, kind, plant, device, profile, random,
                              needs, reconnect, timeout))
        return plant

    return register


def catalogue() -> list[Mutant]:
    """Every mutant, in a stable order (registered by importing the mutant modules)."""
    from tests.check.mutation import mutants_data, mutants_fsm, mutants_wire  # noqa: F401

    return list(MUTANTS)


def markdown(mutants: list[Mutant]) -> str:
    """The catalogue as the Markdown page ``tests/check/mutation/README.md`` (generated:
    ``python -m tests.check.mutation.catalogue > tests/check/mutation/README.md``)."""
    pending = [m for m in mutants if m.needs]
    killed = len(mutants) - len(pending)
    lines = [
        "# Planted server defects (mutants) and the checks that catch them",
        "",
        "Generated from `tests/check/mutation/catalogue.py` (do not edit by hand).",
        "`tests/check/test_mutants.py` runs `vfio-user-mig check` against each mutant,",
        "planted into our own server in the test process, and fails when one survives;",
        "`python benchmarks/run.py check_mutants` prints the kill rate (`check_mutant_kill_rate`).",
        "",
        f"{len(mutants)} mutants: {killed} caught by the current checks "
        f"(kill rate {killed / len(mutants):.2f})"
        + (f", {len(pending)} waiting for a check being built (strict expected failures)."
           if pending else "."),
        "",
        "| mutant | defect | checked by | finding | device | status |",
        "|---|---|---|---|---|---|",
    ]
    for m in mutants:
        by = (f"`--random {m.random[0]} --seed {m.random[1]}`" if m.random
              else ", ".join(m.groups))
        device = m.device + (f", `--profile {m.profile}`" if m.profile else "")
        status = f"pending: {m.needs}" if m.needs else "killed"
        lines.append(f"| `{m.name}` | {m.description} | {by} | {m.kind} | {device} | "
                     f"{status} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the registry is the imported module's, not __main__'s
    from tests.check.mutation import catalogue as _registry

    print(_registry.markdown(_registry.catalogue()), end="")


__all__ = ["GROUPS", "KINDS", "MUTANTS", "Mutant", "catalogue", "markdown", "mutant"]
