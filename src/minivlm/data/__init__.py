"""Data: records, chat templates, images and the built-in synthetic task."""
