"""quality room (docs/architecture.md §0): the project measures and tunes itself (issue 19)."""
