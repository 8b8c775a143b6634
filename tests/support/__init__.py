"""Helpers the tests share: plain functions and classes, no fixtures (those are in conftest.py).

bus.py              a namespace of one's own, the bus's processes, waiting for a condition
api.py              the API over HTTP: send, read a task's record, its status and the log
ledger.py           what the tracker recorded, read straight from the database; exactly once
servers.py          RabbitMQ and PostgreSQL servers of a test's own, which it may stop or kill
callback_proxy.py   a proxy before the API's callback endpoint that fails or holds answers
compose_config.py   Docker Compose's reading of the compose files (interpolation, merge)

Test modules import from here, never from another test module or from a conftest.py.
"""
