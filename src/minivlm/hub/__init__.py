"""Saving, loading, publishing and converting models."""
