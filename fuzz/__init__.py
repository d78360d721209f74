"""Fuzz targets for vfio-user-mig (docs/SECURITY.md): see fuzz/README.md."""
