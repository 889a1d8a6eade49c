"""Prefect flows, the run configuration and the command line."""
