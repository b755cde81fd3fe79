"""API keys (hashed at rest), the admin key, and the request principal."""
