"""The referee room: a vfio-user server that serves a *client* under test and keeps the record.

Its one job is to give a client a device to migrate and to remember everything that happened:
it hosts one of the simulator's devices on a :class:`~vfio_user_mig.simulator.server.core.
ServerCore` (so it answers as a correct device does), records every message of the session in
both directions with the facts only the device knows (its migration state, its digest, the
dirty pages nobody asked for), and misbehaves on purpose in the ways a device may (an arc that
fails, a refused RESUMING -> STOP, endless dirtying, unpadded short MIG_DATA_READ replies,
DMA during STOP_COPY, a dropped connection), as the scenario of :mod:`.scenarios` says.

Judging the record against the model and the spec is not its job: ``check-client``
(:mod:`vfio_user_mig.check.client`) does that. :mod:`.record` is the recorded session,
:mod:`.scenarios` the misbehaviours, :mod:`.pump` the socket side.
"""
