"""The test suites of lemonade_jupyter (a package, so that ``tests.helpers`` imports by name)."""
