"""The coordinator command line."""
