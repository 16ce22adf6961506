"""Composition roots: coordinator and sites wired together in one process.

``server/`` and ``client/`` never import each other (tests/unit/test_layering.py); what needs
both sides lives here: the in-process grid the benchmarks and the round-contract tests drive
the real round loop with, and ``fedtl simulate``'s wiring of Flower's simulation engine.
"""
