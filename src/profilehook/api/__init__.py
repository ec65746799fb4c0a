"""HTTP: a thin raw-ASGI ingest path in front of a Starlette app for everything else."""
