"""Synthetic scanned patents in the CCKS 2025 layout, with questions and their ground truth.

    python -m patentqa.data.synth out_dir=DIR n_docs=N seed=S        a synthetic set (``__main__``)
    python -m patentqa.data.synth.ccitt src=DIR out=DIR              that set as CCITT G4 scans

``patents`` writes a set (``SynthSpec``, ``generate``); ``questions`` draws questions from a patent's
truth, ``choices`` turns them into round-A four-way choices, ``render`` draws and scans the pages,
``vocab`` holds the word lists and ``Part``, and ``ccitt`` re-encodes a set the way real scans are stored.
"""
