"""Live migration between two vfio-user servers, driven by the VMM client (issue 5)."""
