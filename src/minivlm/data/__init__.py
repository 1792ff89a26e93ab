"""Data: records, shards, DataModules and the built-in synthetic task."""
