"""labelstudio room (docs/architecture.md §0)."""
