"""purer.cli."""
