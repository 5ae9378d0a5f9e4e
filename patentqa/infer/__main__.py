"""Answer a split with a checkpoint (or the base model); resumable; writes the submission.

    python -m patentqa.infer +exp=smoke checkpoint=runs/smoke/TIME/swift/v0-.../checkpoint-30 split=test
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from patentqa.config import CONF_DIR
from patentqa.infer.run import format_summary, infer


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = infer(cfg)
    print(f"\npredictions: {summary['out_dir']}/predictions.jsonl\nsubmission:  {summary['out_dir']}/submission.jsonl\n"
          + format_summary(summary))


if __name__ == "__main__":
    main()
