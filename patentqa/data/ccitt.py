"""Moved: ``python -m patentqa.data.synth.ccitt src=DIR out=DIR`` (the synthetic generator's package)."""
import sys

sys.exit("patentqa.data.ccitt moved: run python -m patentqa.data.synth.ccitt src=DIR out=DIR [threshold=128]")
