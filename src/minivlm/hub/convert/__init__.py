"""Converters from other projects' checkpoints to minivlm model directories."""
