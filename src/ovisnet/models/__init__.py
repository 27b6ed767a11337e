"""ovisnet.models."""
