"""SIIT library: pure Python, no Prefect, DVC or CLI imports."""
