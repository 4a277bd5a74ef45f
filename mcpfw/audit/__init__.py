"""audit layer (see DESIGN.md)."""
