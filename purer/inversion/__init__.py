"""purer.inversion."""
