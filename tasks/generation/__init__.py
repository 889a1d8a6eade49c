"""Placeholder package; see config.py."""
