"""VAS: value-augmented sampling (Han et al., 2024)."""
