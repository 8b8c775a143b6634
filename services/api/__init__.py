"""The HTTP API of the bus (FastAPI)."""
