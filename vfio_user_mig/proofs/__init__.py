"""Exhaustive, machine-checked properties of the migration FSM and protocol."""
