"""Answer a split with a checkpoint (or the base model); resumable; writes the submission.

    python -m patentqa.infer +exp=smoke checkpoint=runs/smoke/TIME/swift/v0-.../checkpoint-30 split=test
    python -m patentqa.infer +exp=smoke infer=vllm infer.data_parallel_size=2     # 2 replicas on this node
    python -m patentqa.infer -m +exp=smoke infer.num_shards=2 infer.shard=0,1 hydra/launcher=slurm_8gpu
    python -m patentqa.infer +exp=smoke infer.num_shards=2 infer.merge=true       # merge finished shards
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from patentqa.cli import InputError, fail
from patentqa.config import CONF_DIR
from patentqa.infer.run import format_summary, infer


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        summary = infer(cfg)
    except InputError as error:
        sys.exit(fail(error))
    if summary.get("merged") is False:  # this shard is done, others are not
        print(f"\nthis shard's part(s) are written under {summary['out_dir']}/parts; {summary['waiting']}")
        return
    print(f"\npredictions: {summary['out_dir']}/predictions.jsonl\nsubmission:  {summary['out_dir']}/submission.jsonl\n"
          + format_summary(summary))


if __name__ == "__main__":
    main()
