"""Admin API: inspect, edit, export and delete what Rapport knows about a user."""
