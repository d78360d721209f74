"""Live migration between two vfio-user servers, driven by the VMM client (PROTOCOL.md
section 4).

Modules (nothing is imported here, so the CLI stays fast):

* :mod:`.driver`: :class:`~.driver.MigrationDriver` (the VMM's migration code: the phases),
  built on :mod:`.driver_relay` (the device-stream relay) and :mod:`.driver_base` (state and
  plumbing); :mod:`.driver_types`: ``Side``, ``DriverConfig``, ``MigrationResult``,
  ``MigrationError``;
* :mod:`.session`: :func:`~.session.migrate` (one migration assembled from
  :class:`~.session.MigrateOptions`, with fault/observation ``Hooks``);
* :mod:`.policies`: switchover policies (``qemu``, ``iterations``, ``dirty-rate``);
* :mod:`.guest`: guest RAM with the VMM's dirty tracking, and the workload;
* :mod:`.clock`: ``SimClock`` (the link advances time) and ``RealClock``;
* :mod:`.trace`: JSON-lines events and the summary computed from them;
* :mod:`.isolation`: servers in threads, processes, or external (UNIX sockets);
* :mod:`.faults`, :mod:`.campaign`: randomized campaigns with faults and invariants;
* :mod:`.commands`: the ``migrate`` and ``simulate`` CLI commands.
"""
