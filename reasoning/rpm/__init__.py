"""RPM: reasoning-level personalization for black-box LLMs (Kim et al., 2025)."""
