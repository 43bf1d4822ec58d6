"""Read-only analysis: metrics, observers, sensitivity. Nothing here changes a model."""
