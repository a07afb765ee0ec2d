"""purer.report."""
