"""Logging set-up shared by the services."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO", service: str = "convbus") -> None:
    """Readable lines on stderr, one per record, naming the service."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    # aio-pika logs every reconnect attempt at length; the services log their own summary.
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
