"""Never run by a fork: its package's import leaves a thread running."""
