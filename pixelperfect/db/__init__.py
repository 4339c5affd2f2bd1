"""SQL persistence: typed models, sessions, keyword-only repository functions and evaluation queries."""
