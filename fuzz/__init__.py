"""Fuzz targets for vfio-user-mig (issue #8): see fuzz/README.md."""
