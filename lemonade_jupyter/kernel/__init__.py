"""The notebook side: an HTTP client of the server extension, ``%lemonade`` magics, a dashboard.

Kernel code runs in the kernel process and talks to the router only over HTTP (the Jupyter
server's extension, or an embedded router this kernel starts on a thread of its own). It imports
nothing from ``lemonade_jupyter.core`` or ``lemonade_jupyter.server`` at import time; the one
exception is :class:`~lemonade_jupyter.kernel.embedded_client.EmbeddedClient`, which imports
``lemonade_jupyter.server.embedded`` lazily when it starts.

Modules:

- ``client``: ``RouterClient`` (sync httpx, one method per route).
- ``wire``: httpx errors and error answers as ``ClientError``; the SSE parser.
- ``embedded_client``: ``EmbeddedClient``, the one embedded router of a kernel process.
- ``discovery``: which router this kernel uses (env, JupyterHub, parent server, running server,
  embedded; unix sockets too).
- ``chat``: ``Chat`` (a conversation that keeps its history), replies that render as Markdown,
  and the input transformer that keeps a ``%lemonade chat ... ?`` line from being help.
- ``openai_support``: ``openai_client()`` / ``async_openai_client()`` for the router in use.
- ``pools``: pure summaries of a health snapshot (slots per type, the pinned-slots warning).
- ``rendering``: result objects with an HTML and a plain-text form.
- ``progress``: the load progress indicator.
- ``events``: a daemon thread following ``lemonade/api/v1/events``.
- ``magics``: ``%lemonade`` / ``%%lemonade``.
- ``widgets``: the live ipywidgets dashboard (one per kernel), from its parts: ``model_row``
  (a row of the model table), ``memory_chart`` (the memory panel and its history), ``poller``
  (the refresh thread) and ``dashboard_actions`` (clicks run on worker threads).
"""
