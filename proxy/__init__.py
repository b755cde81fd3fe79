"""Rapport: a personalization proxy for any LLM (HTTP surface, upstream calls, orchestration)."""

__version__ = "0.1.0"
