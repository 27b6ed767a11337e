"""ovisnet.lit."""
