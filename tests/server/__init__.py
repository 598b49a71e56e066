"""End-to-end tests of the Jupyter server extension (a package so tests share helpers)."""
