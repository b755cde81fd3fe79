"""Calls to upstream models: litellm for every provider, plus an httpx fast path for OpenAI-compatible bases."""
