"""Studies run through the real simulator: pre-copy convergence and the migration-data transport."""
