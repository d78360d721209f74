"""CLI sub-command `study` (registered on import by vfio_user_mig.cli)."""
