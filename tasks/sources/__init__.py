"""Instruction source adapters and sampling."""
