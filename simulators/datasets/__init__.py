"""Data sets for replay: converters for public data and a small synthetic sample (see README.md)."""
