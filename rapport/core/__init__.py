"""Pieces that several of Rapport's server packages share (`proxy`, `memory`, `reasoning`).

Nothing here imports those packages, so each of them may import from here without a cycle.
"""
