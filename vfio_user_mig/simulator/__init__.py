"""Simulated vfio-user peers: emulated devices and their migration streams (sans-IO)."""
