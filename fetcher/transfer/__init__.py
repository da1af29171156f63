"""transfer layer."""
