"""Engines ("recipes"): how to find a backend binary and build its command line."""

from .llamacpp import LlamaCppEngine, find_llama_server

__all__ = ["LlamaCppEngine", "find_llama_server"]
