"""OpenAI-compatible /v1/completions endpoint."""
