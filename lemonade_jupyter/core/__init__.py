"""The router core: catalog, engines, backend processes, router, eviction, memory, events.

Nothing in this package imports Jupyter; the server layer (``lemonade_jupyter.server``) and the
embedded mode of the kernel both drive the same :class:`~lemonade_jupyter.core.router.Router`.
"""
