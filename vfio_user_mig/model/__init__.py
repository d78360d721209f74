"""The authoritative vfio-user migration FSM (work in progress: see states.py)."""

from vfio_user_mig.model.states import ALL_CAPS, VFIO_USER_CAPS, MigrationCaps, State

__all__ = ["ALL_CAPS", "VFIO_USER_CAPS", "MigrationCaps", "State"]
