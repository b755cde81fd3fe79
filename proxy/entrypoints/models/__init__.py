"""OpenAI-compatible /v1/models endpoint."""
