"""The authoritative vfio-user (and VFIO) migration FSM.

Theory of operation
===================

A migratable device is always in one of the kernel's ``enum vfio_device_mig_state`` states
(:class:`State`). Which states exist depends on the capability flags the device reports with
``VFIO_DEVICE_FEATURE_MIGRATION`` (:class:`MigrationCaps`): STOP_COPY is mandatory and gives
STOP, RUNNING, STOP_COPY and RESUMING; P2P adds RUNNING_P2P; PRE_COPY adds PRE_COPY; both
together add PRE_COPY_P2P. vfio-user devices use STOP_COPY|PRE_COPY (:data:`VFIO_USER_CAPS`);
the other three sets are modelled because this is the authoritative FSM for VFIO too.

The FSM is a Mealy machine: the device acts on the *arcs*. The direct arcs and their actions
are declared once, as data, in :mod:`vfio_user_mig.model.graph` (``STATES`` and ``ARCS``);
:func:`transition_graph` derives the ``networkx.DiGraph`` of one capability set. With P2P the
RUNNING <-> STOP arcs go through RUNNING_P2P, and with P2P and PRE_COPY the PRE_COPY ->
STOP_COPY arc goes through PRE_COPY_P2P: an arc may be declared "absent with" a capability.
PRE_COPY, PRE_COPY_P2P and STOP_COPY form the *saving group*.

A request to move to any supported state is a *complex transition*: the shortest path over
direct arcs that never enters the saving group at an interior state and never leaves it and
re-enters it, preferring to leave the saving group as early as possible among equals
(:mod:`vfio_user_mig.model.paths`). That rule reproduces the Linux kernel's
``vfio_mig_get_next_state()`` on all 256 (caps, cur, target) pairs, including its one
interior saving state (PRE_COPY -> PRE_COPY_P2P -> STOP_COPY) and its two blocked requests
(STOP_COPY -> PRE_COPY and STOP_COPY -> PRE_COPY_P2P, refused with EINVAL). ERROR can never
be requested and is left only by DEVICE_RESET, which returns the device to RUNNING.

The device side runs the same graph: :class:`DeviceFSM` wraps a ``transitions.Machine`` built
from it (one trigger per arc, nothing else), walks a path arc by arc with one Mealy action per
arc, stops at the last completed state when an action fails, or enters ERROR when the device
says it cannot restore a valid state.

Nothing else in the project defines states, arcs or transitions: tables, pictures, the
server's gating, the simulator and the proofs all derive from this package.
"""

from vfio_user_mig.model.errors import ArcActionError, InvalidTransition
from vfio_user_mig.model.executor import ArcActions, DeviceFSM, NoActions, WalkResult
from vfio_user_mig.model.graph import (
    ARCS,
    STATES,
    caps_label,
    is_supported,
    parse_caps,
    transition_graph,
)
from vfio_user_mig.model.paths import known_path, next_state, path_table, transition_path
from vfio_user_mig.model.states import ALL_CAPS, VFIO_USER_CAPS, MigrationCaps, State

__all__ = [
    "ALL_CAPS",
    "ARCS",
    "STATES",
    "VFIO_USER_CAPS",
    "ArcActionError",
    "ArcActions",
    "DeviceFSM",
    "InvalidTransition",
    "MigrationCaps",
    "NoActions",
    "State",
    "WalkResult",
    "caps_label",
    "is_supported",
    "known_path",
    "next_state",
    "parse_caps",
    "path_table",
    "transition_graph",
    "transition_path",
]
