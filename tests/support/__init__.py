"""Helpers shared by tests/unit, tests/integration and bench: builders of ECGs and messages,
peers (carts, EHRs) and the one harness that runs the daemon as a subprocess.

bench may import this package; nothing under tests/ imports bench (tests/unit/test_layout.py).
"""
