"""Per-task-kind pipelines: decoded input → network tensors → masks in the source grid."""
