"""proxy layer (see DESIGN.md)."""
