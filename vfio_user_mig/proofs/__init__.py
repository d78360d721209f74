"""Exhaustive, machine-checked properties of the migration FSM and protocol.

A *theorem* (:class:`Theorem`) is a named, precisely stated property over a finite domain with
a checker that enumerates the whole domain; its :class:`Result` says whether it holds, how
many cases were checked, and, when it fails, the smallest counterexample (with the shortest
trace for state-space properties). Results render as a terminal table, Markdown or JSON
(:mod:`~vfio_user_mig.proofs.report`); ``vfio-user-mig prove`` runs the default suite.

Modules, one job each:

* :mod:`~vfio_user_mig.proofs.framework`: theorems, verdicts, results, :func:`exhaust`;
* :mod:`~vfio_user_mig.proofs.fsm_rule`: the FSM rule stated independently of the model, and
  the implementation under test (:class:`~.fsm_rule.FsmUnderTest`; the model by default);
* :mod:`~vfio_user_mig.proofs.fsm_theorems`: the FSM theorems, per capability set, checking an
  implementation under test;
* :mod:`~vfio_user_mig.proofs.session_model`: the abstract migration session (driver, source,
  destination, bounded channels, server-initiated DMA), explored exhaustively with networkx;
* :mod:`~vfio_user_mig.proofs.protocol_theorems`: the legality table (against the model and
  against a live server probe) and the session theorems, including the one expected to fail
  (a driver that does not serve DMA requests deadlocks);
* :mod:`~vfio_user_mig.proofs.mutants`: seeded bugs (the kernel's unfixed skip loop, a missing
  blocked arc, the P2P arc set replaced by the non-P2P one, a wrong tie-break, libvfio-user's
  off-by-one state bound, two session bugs) that the theorems must reject;
* :mod:`~vfio_user_mig.proofs.suite`: the default suite, selection, the mutation matrix;
* :mod:`~vfio_user_mig.proofs.kernel_reference`: the kernel's table transcribed by hand, the
  independent oracle.

Expected-to-fail theorems (``expect="fails"``) pass when they fail; a run is successful when
every outcome matches its expectation.
"""

from vfio_user_mig.proofs.framework import (
    Counterexample,
    Explored,
    Result,
    Skip,
    Status,
    SuiteResult,
    Theorem,
    Verdict,
    exhaust,
    run_all,
    run_theorem,
)

__all__ = [
    "Counterexample",
    "Explored",
    "Result",
    "Skip",
    "Status",
    "SuiteResult",
    "Theorem",
    "Verdict",
    "exhaust",
    "run_all",
    "run_theorem",
]
