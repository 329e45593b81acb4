"""relformer.data."""
