"""HTTP entrypoints: one package per endpoint, split into api_router (routing), protocol (wire schemas) and serving (logic)."""
