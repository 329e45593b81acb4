"""relformer.tasks."""
