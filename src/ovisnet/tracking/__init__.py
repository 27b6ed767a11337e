"""ovisnet.tracking."""
