"""Stage kinds (filled in below)."""
