"""Datasets: a registry of sources that all produce the same cached split format."""
