"""Helpers the tests share: plain functions and classes, no fixtures (those are in conftest.py).

bus.py       a namespace of one's own, the bus's processes, waiting for a condition

Test modules import from here, never from another test module or from a conftest.py.
"""
