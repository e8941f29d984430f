"""Shared pytest settings: the repository root is importable (tests.harness), nothing else."""
