"""Rapport reasoning: reasoning-level personalization (RPM) and value-augmented sampling (VAS)."""
