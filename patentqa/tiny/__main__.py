"""``python -m patentqa.tiny out_dir=DIR``: build the tiny models, print their paths."""
from __future__ import annotations

import sys

from patentqa.tiny import main

if __name__ == "__main__":
    main(sys.argv[1:])
