"""Data sets: reading users' uploads and storing them."""
