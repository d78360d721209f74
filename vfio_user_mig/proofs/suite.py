"""The proof suite: which theorems run by default, against which implementation, and the
mutation matrix (which seeded mutant breaks which theorems)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vfio_user_mig.model import ALL_CAPS, VFIO_USER_CAPS, MigrationCaps
from vfio_user_mig.proofs.framework import Status, SuiteResult, Theorem, run_all
from vfio_user_mig.proofs.fsm_theorems import MODEL, FsmUnderTest, fsm_theorems

if TYPE_CHECKING:
    from vfio_user_mig.proofs.protocol_theorems import Probe
    from vfio_user_mig.proofs.session_model import SessionConfig


def default_suite(
    caps_list: Sequence[MigrationCaps] = ALL_CAPS,
    fut: FsmUnderTest = MODEL,
    *,
    session: SessionConfig | None = None,
    protocol: bool = True,
    probe_factory: Callable[[MigrationCaps], Probe] | None = None,
) -> list[Theorem]:
    """The FSM theorems for ``caps_list`` (checking ``fut``), then, with ``protocol``, the
    legality theorems and the session theorems (vfio-user capabilities: vfio-user devices
    never have P2P). The server legality theorem is skipped when the simulator's probe is not
    importable and no ``probe_factory`` is given. The protocol theorems are imported only
    when asked for (they depend on the wire package; the FSM theorems do not)."""
    theorems = fsm_theorems(fut, caps_list)
    if protocol:
        # imported here: the protocol theorems need the wire package, the FSM ones do not
        from vfio_user_mig.proofs.protocol_theorems import legality_theorems, session_theorems

        theorems += legality_theorems((VFIO_USER_CAPS,), probe_factory)
        theorems += session_theorems(session)
    return theorems


def select(theorems: Sequence[Theorem], patterns: Sequence[str]) -> list[Theorem]:
    """The theorems whose name matches one of the ``patterns`` (all when none given): ``*``
    and ``?`` are wildcards, brackets are literal (``fsm.*[STOP_COPY]``); a pattern without
    wildcards matches as a substring."""
    if not patterns:
        return list(theorems)
    globs = [p.replace("[", "[[]") if any(ch in p for ch in "*?") else f"*{p.replace('[', '[[]')}*"
             for p in patterns]
    return [t for t in theorems if any(fnmatch.fnmatchcase(t.name, g) for g in globs)]


def run_suite(theorems: Sequence[Theorem], implementation: str = "model") -> SuiteResult:
    """Check the theorems (in order)."""
    return run_all(theorems, implementation)


def theorem_key(theorem_name: str) -> str:
    """``fsm.kernel-agreement[STOP_COPY]`` -> ``kernel-agreement``."""
    return theorem_name.split(".", 1)[-1].split("[", 1)[0]


def mutation_matrix(caps_list: Sequence[MigrationCaps] = ALL_CAPS) -> dict[str, list[str]]:
    """For every seeded mutant, the names of the theorems it breaks (fails or errors)."""
    from vfio_user_mig.proofs.mutants import FSM_IMPLEMENTATIONS, SESSION_MUTANTS
    from vfio_user_mig.proofs.protocol_theorems import session_theorems

    matrix: dict[str, list[str]] = {}
    for name, impl in FSM_IMPLEMENTATIONS.items():
        result = run_all(fsm_theorems(impl, caps_list), name)
        matrix[name] = [r.theorem.name for r in result.results if r.status is not Status.HOLDS]
    for name, cfg in SESSION_MUTANTS.items():
        result = run_all(session_theorems(cfg, suffix=name, non_serving=False), name)
        matrix[name] = [r.theorem.name for r in result.results if not r.as_expected]
    return matrix


__all__ = ["default_suite", "mutation_matrix", "run_suite", "select", "theorem_key"]
