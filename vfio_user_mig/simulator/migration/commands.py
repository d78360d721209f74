"""CLI sub-commands of the migration layer (``migrate``, ``simulate``), registered on import."""
