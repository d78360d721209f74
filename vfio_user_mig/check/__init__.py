"""``vfio-user-mig check``: a conformance and bug-finding checker for any vfio-user server.

It points the model (:mod:`vfio_user_mig.model`) and the wire rules (PROTOCOL.md) at a server
reached over a UNIX socket (:mod:`.target`), sends it request sequences over raw connections
with deadlines (:mod:`.conn`, :mod:`.session`), and reports every departure as a
:class:`~.findings.Finding` with the rule it breaks and a reproducer (:mod:`.steps`) that
``check --replay`` runs again.
"""
