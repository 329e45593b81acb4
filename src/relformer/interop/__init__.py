"""relformer.interop."""
