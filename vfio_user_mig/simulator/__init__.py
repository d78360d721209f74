"""Simulated vfio-user peers, over real sockets, in four rooms:

* :mod:`.server`: a vfio-user server hosting one device (sans-IO core, handlers, socket pump);
* :mod:`.client`: the VMM side (sans-IO core, socket layer, operations);
* :mod:`.device`: pure-Python emulated devices, dirty logging, DMA and migration streams;
* :mod:`.migration`: the migration driver, switchover policies, campaigns and faults.

:mod:`.transport` (bytes and fds between a socket and a sans-IO core) serves both the server
and the client; :mod:`.executor` runs batches locally or on Dask for campaigns and studies.
"""
