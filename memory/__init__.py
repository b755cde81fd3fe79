"""Rapport memory: summary-augmented retrieval over each user's stored exchanges."""
