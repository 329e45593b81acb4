"""relformer.models."""
