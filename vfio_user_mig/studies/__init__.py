"""Studies run through the real simulator: pre-copy convergence (issue 7)."""
