"""The library half of each command (no click here)."""
