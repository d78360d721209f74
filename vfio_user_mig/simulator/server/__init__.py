"""The server room: a vfio-user server hosting one device (vfio-user.rst, "Server"; PROTOCOL.md).

Its one job is to serve a client: :mod:`.core` is the sans-IO protocol core (gating by migration
state, dispatch to the handlers of :mod:`.setup`, :mod:`.access`, :mod:`.feature` and
:mod:`.dma` over the session state of :mod:`.state`), :mod:`.io` pumps it over a socket,
:mod:`.hosting` wires a device to a core, :mod:`.irqs` delivers interrupts,
:mod:`.mig_channel` is the experimental migration-data socket and :mod:`.legality_probe`
asks a live server about one (state, command) cell. The devices it hosts live in
:mod:`vfio_user_mig.simulator.device`.
"""
