"""relformer.nn."""
