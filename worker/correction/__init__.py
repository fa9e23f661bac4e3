"""correction room (docs/architecture.md §0)."""
