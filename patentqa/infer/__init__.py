"""Inference engines and the answer pipeline."""
