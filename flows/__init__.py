"""Prefect flows: thin orchestration of `components` (no ML logic here)."""
