"""The server layer: the Jupyter extension app, REST and proxy handlers, the embedded server."""
