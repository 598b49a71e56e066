"""The one error of building an engine: a flavour that cannot be built here.

A module of its own so that the build planner (:mod:`.gpu`) and the toolkit installer
(:mod:`.cuda_toolkit`), which use each other's answers, both raise it without importing each
other in a circle.
"""

from __future__ import annotations


class BuildFlavourError(RuntimeError):
    """The requested flavour cannot be built here; the message names what is missing."""
