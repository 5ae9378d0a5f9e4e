"""Build the dataset for an experiment: pages, (later) embeddings, SFT and held-out sets.

    python -m patentqa.data +exp=smoke
"""
from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from patentqa.config import CONF_DIR
from patentqa.data.build import build_dataset
from patentqa.data.corpus import DataError


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        build = build_dataset(cfg)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    summary = {k: build.manifest[k] for k in ("questions", "kinds", "pages")}
    summary["problems"] = build.manifest["problems"]["count"]
    print(f"dataset: {build.out_dir}\n{json.dumps(summary, ensure_ascii=False, indent=2)}")


if __name__ == "__main__":
    main()
