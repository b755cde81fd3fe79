"""OpenAI-compatible /v1/embeddings endpoint."""
