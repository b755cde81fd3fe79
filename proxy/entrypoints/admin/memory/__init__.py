"""Memory and job admin API: users, memories, summaries, export/import, forget, background jobs."""
