"""purer.meta."""
