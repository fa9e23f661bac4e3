"""clicks room (docs/architecture.md §0)."""
