"""Interactive API docs (/docs, /redoc) served with their assets from Rapport itself, so they work offline."""
