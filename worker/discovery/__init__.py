"""discovery room (docs/architecture.md §0)."""
