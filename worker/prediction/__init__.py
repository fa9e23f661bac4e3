"""prediction room (docs/architecture.md §0)."""
