"""The package's version, in a leaf module so that any module may read it without importing the
package's entry points (which would make an import circle through the server extension)."""

__version__ = "0.1.0"
