"""Benchmarks of lemonade_jupyter: what the router costs, side by side with bare llama-server.

Run ``python -m benchmarks`` (full run, under 10 minutes on 2 cores) or
``python -m benchmarks --smoke`` (a few repetitions, what CI runs). Results go to
``benchmarks/results/results.json`` and ``results.md``; see ``benchmarks/README.md``.
"""
