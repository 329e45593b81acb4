"""relformer.train."""
