"""One data-parallel replica: answer one part of the split with the config its job wrote.

    python -m patentqa.infer.replica RUN_OUT/parts/config.yaml PART

Started by ``patentqa.infer.shards.run_replicas`` (pinned to its own GPUs or cores), not by hand.
"""
from __future__ import annotations

import sys

from omegaconf import OmegaConf

import patentqa.config  # noqa: F401 - registers the resolvers the stored config uses
from patentqa.data.build import build_dataset
from patentqa.infer.run import answer_one_part, output_dir, split_questions
from patentqa.infer.shards import ShardLayout


def main(argv: list[str]) -> None:
    config, part = argv
    cfg = OmegaConf.load(config)
    build = build_dataset(cfg)
    answer_one_part(cfg, build, split_questions(build, cfg.split), output_dir(cfg), int(part),
                    ShardLayout.from_cfg(cfg.infer))


if __name__ == "__main__":
    main(sys.argv[1:])
