"""OpenAI-compatible /v1/chat endpoint."""
