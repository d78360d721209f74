"""The client room: the VMM side of vfio-user, usable against any vfio-user server.

Its one job is to drive a server: :mod:`.core` is the sans-IO protocol core (typed events,
answers to the server's DMA requests), :mod:`.io` its blocking socket layer, :mod:`.api` the
operations (:class:`~.api.Client`), :mod:`.threaded` a client
several threads share, :mod:`.memory` the guest RAM it maps into the server.
"""
