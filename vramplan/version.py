"""The version of vramplan (a leaf: anything may import it without importing the package's facade)."""

__version__ = "0.1.0"
