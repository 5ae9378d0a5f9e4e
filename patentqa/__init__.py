"""patentqa: multimodal question answering over scanned patent PDFs."""

__version__ = "0.1.0"
