"""The OCR layer: what a page says and where its figures are, read from the scan itself.

    python -m patentqa.data.ocr dir=DIR split=train [truth=true]     read a split (``__main__``)

``reader`` reads every page with PP-OCRv4 (text lines, part-number labels) and caches it per page;
``figures`` finds each ``图N`` caption and the drawing it labels; ``layout`` gives the prompt builder
a finished pass (page text, figure crops); ``truth`` scores a pass against a synthetic set's truth.
"""
