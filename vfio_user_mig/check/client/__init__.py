"""``vfio-user-mig check-client``: hold a vfio-user *client* (a VMM) to the model and the spec.

The referee server (:mod:`vfio_user_mig.simulator.referee`) serves the client under test and
records the session; this package judges it: :mod:`.rules` (each client rule with its spec
section), :mod:`.judge` (sans-IO: a recorded session in, findings out), :mod:`.scenarios`
(what the client must do in each scenario), :mod:`.runner` (the thin IO: referees up, the
client run with a timeout), :mod:`.report` (a check ``Report``, so ``--json``,
``--markdown`` and reproducers look as ``check``'s do) and :mod:`.commands` (the CLI).
"""
