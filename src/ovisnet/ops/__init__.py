"""ovisnet.ops."""
