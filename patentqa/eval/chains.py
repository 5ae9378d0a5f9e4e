"""Reasoning chains for real data by rejection sampling: a model answers every *training* question
with a chain and a final line, and a chain is kept only when that answer scores.

    python -m patentqa.eval.chains +exp=NAME [checkpoint=DIR]

asks the run's ``infer`` engine (``checkpoint=DIR`` for a tuned model) and keeps a chain when its
final answer scores at least ``data.chains.threshold`` char F1 against the gold answer. Kept and
rejected chains go to the cache that the data stage reads for ``prompt.target=cot``
(``patentqa.data.chains.cache_path``, atomic); it prints the acceptance rate by question kind.
The chain format and the cache belong to the data stage; asking a model and scoring its answer are
inference and evaluation, so the command lives here, above both.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from patentqa.data.build import build_dataset, prompt_config
from patentqa.data.chains import FINAL, asking_config, cache_path, chain_spec, final_answer
from patentqa.data.prompts import with_chain_request
from patentqa.data.questions import parse_question
from patentqa.data.sft import question_prompt
from patentqa.eval.metrics import char_f1
from patentqa.infer.engine import Sampling
from patentqa.infer.engines import make_engine
from patentqa.tracking import atomic_write


def accept(reply: str, gold: str, threshold: float) -> dict[str, Any]:
    """Whether a generated chain's final answer scores at least ``threshold`` char F1 against ``gold``."""
    answer, has_final = final_answer(reply)
    score = char_f1(answer, gold) if answer else 0.0
    chain = reply[:reply.rfind(FINAL)].strip() if has_final and FINAL in reply else ""
    return {"chain": chain, "final": answer, "has_final_line": has_final, "score": round(score, 4),
            "accepted": bool(has_final and chain and score >= threshold)}


def generate_chains(cfg: Any) -> dict[str, Any]:
    """Ask the configured engine for a chain per training question; cache; report acceptance by kind."""
    build = build_dataset(asking_config(cfg))  # the rows to ask from: no chains needed yet
    train = [q for q in build.questions["train"] if q.answer]
    config = prompt_config(cfg)
    settings = cfg.data.chains
    prompts = [with_chain_request(question_prompt(config, q, build.documents[q.document], build.pages.paths,
                                                  build.retriever, layout=build.layout)) for q in train]
    engine = make_engine(cfg.infer, cfg.model)
    try:
        replies = engine.generate(prompts, Sampling(max_new_tokens=int(settings.max_new_tokens)), cfg.checkpoint)
    finally:
        engine.close()
    rows = [{"id": q.id, "kind": parse_question(q.question).kind, **accept(r, q.answer, float(settings.threshold))}
            for q, r in zip(train, replies)]
    spec = chain_spec(cfg)
    path = cache_path(Path(cfg.paths.cache_dir), build.manifest["dataset_key"], spec)
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    kinds = Counter(r["kind"] for r in rows)
    accepted = Counter(r["kind"] for r in rows if r["accepted"])
    return {"cache": str(path), "questions": len(rows), "accepted": sum(accepted.values()),
            "acceptance_by_kind": {k: round(accepted[k] / n, 4) for k, n in sorted(kinds.items())},
            "without_final_line": sum(not r["has_final_line"] for r in rows), "spec": spec}


def main() -> None:
    import hydra

    from patentqa.config import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(cfg: Any) -> None:
        print(json.dumps(generate_chains(cfg), ensure_ascii=False, indent=2))

    sys.argv[0] = "patentqa.eval.chains"
    run()


if __name__ == "__main__":
    main()
