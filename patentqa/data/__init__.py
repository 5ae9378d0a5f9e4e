"""Corpus reading and validation, page rendering, question routing, split, synthetic patents."""
