"""vfio-user-mig."""
