"""Pieces of the vector stores, one job a module."""
