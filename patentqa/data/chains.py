"""Reasoning-chain targets for ``prompt.target=cot``: a short chain, then one line "答案：…".

Where chains come from:

- a synthetic set: the generator's truth (``{split}/truth/*.json``) says which parts a question
  is about, where their labels and leader lines are and which side one lies on, or which page
  states the fact; ``synthetic_chain`` writes that down;
- real data: ``python -m patentqa.data.chains +exp=NAME`` asks a model (any engine, the run's
  ``infer`` group; ``checkpoint=DIR`` for a tuned one) for a chain per *training* question and
  keeps a chain only when its final answer scores at least ``data.chains.threshold`` char F1
  against the gold answer (rejection sampling). Kept and rejected chains are cached in
  ``CACHE/chains/<dataset>-<hash>/chains.jsonl`` (atomic), with the acceptance rate by kind.

Chains go into training rows only: dev and test rows keep the plain answer, and evaluation reads
the final line (``final_answer``; a reply without it is scored on its last line, and counted).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

FINAL = "答案："
_FINAL_LINE = re.compile(r"^\s*(?:最终)?答案\s*[:：]\s*(.*\S)\s*$")


def cot_response(chain: str, answer: str) -> str:
    """The SFT target: the chain, then the fixed final line."""
    return f"{chain.strip()}\n{FINAL}{answer}"


def final_answer(reply: str) -> tuple[str, bool]:
    """(final answer, whether the reply had its "答案：" line); without one, the last non-empty line."""
    lines = [line for line in str(reply).splitlines() if line.strip()]
    for line in reversed(lines):
        match = _FINAL_LINE.match(line)
        if match:
            return match.group(1).strip(), True
    return (lines[-1].strip() if lines else ""), False


def _centre(box: list[float]) -> tuple[float, float]:
    return round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)


def synthetic_chain(question_id: str, truth: dict[str, Any]) -> Optional[str]:
    """A chain for a synthetic question from the generator's truth (None when the truth lacks it)."""
    asked = next((q for q in truth.get("questions", []) if q["id"] == question_id), None)
    if asked is None:
        return None
    parts = {p["number"]: p for f in truth["figures"] for p in f["parts"]}
    numbers = [n for n in asked["parts"] if n in parts]
    if asked["kind"] == "figure_position" and len(numbers) >= 2:
        steps = [f"部件{n}的标号在({parts[n]['label'][0]:.0f},{parts[n]['label'][1]:.0f})处，引线指向位于"
                 f"({_centre(parts[n]['bbox'])[0]},{_centre(parts[n]['bbox'])[1]})的主体。" for n in numbers[:2]]
        a, b = numbers[:2]
        return "".join(steps) + f"比较两个主体的位置：部件{a}的主体在部件{b}的主体的{_side(parts[a], parts[b])}。"
    pages = sorted({p["page"] for p in truth["pages"] if any(n in p["parts"] for n in numbers)})
    if numbers:
        where = f"第{'、'.join(map(str, pages))}页的文字提到了部件{'、'.join(map(str, numbers))}" if pages else \
            f"图中标出了部件{'、'.join(map(str, numbers))}"
        return f"问题问的是部件{'、'.join(map(str, numbers))}。{where}，按其说明作答。"
    return "问题问的是整个专利，摘要和说明书写明了答案。"


def _side(a: dict[str, Any], b: dict[str, Any]) -> str:
    (ax, ay), (bx, by) = _centre(a["bbox"]), _centre(b["bbox"])
    if abs(ax - bx) >= abs(ay - by):
        return "右侧" if ax > bx else "左侧"
    return "下方" if ay > by else "上方"


def synthetic_chains(data_dir: Path, split: str, question_ids: list[str]) -> dict[str, str]:
    """Chains from ``data_dir/split/truth`` for these ids (those the truth covers)."""
    chains: dict[str, str] = {}
    wanted = set(question_ids)
    for path in sorted((Path(data_dir) / split / "truth").glob("*.json")):
        truth = json.loads(path.read_text(encoding="utf-8"))
        for asked in truth.get("questions", []):
            if asked["id"] in wanted:
                chain = synthetic_chain(asked["id"], truth)
                if chain:
                    chains[asked["id"]] = chain
    return chains


def asking_config(cfg: Any) -> Any:
    """The config of the rows chains are asked from and cached under: the run's, with plain answer targets."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, {"prompt": {"target": "answer"}})


def cache_path(cache_dir: Path, dataset_key: str, spec: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cache_dir) / "chains" / f"{dataset_key}-{digest}" / "chains.jsonl"


def accept(reply: str, gold: str, threshold: float) -> dict[str, Any]:
    """Whether a generated chain's final answer scores at least ``threshold`` char F1 against ``gold``."""
    from patentqa.eval.metrics import char_f1

    answer, has_final = final_answer(reply)
    score = char_f1(answer, gold) if answer else 0.0
    chain = reply[:reply.rfind(FINAL)].strip() if has_final and FINAL in reply else ""
    return {"chain": chain, "final": answer, "has_final_line": has_final, "score": round(score, 4),
            "accepted": bool(has_final and chain and score >= threshold)}


def cached_chains(path: Path) -> dict[str, str]:
    """Accepted chains of a cache file, by question id."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r["chain"] for r in rows if r["accepted"]}


def generate_chains(cfg: Any) -> dict[str, Any]:
    """Ask the configured engine for a chain per training question; cache; report acceptance by kind."""
    from patentqa.data.build import build_dataset, prompt_config
    from patentqa.data.prompts import with_chain_request
    from patentqa.data.questions import parse_question
    from patentqa.data.sft import question_prompt
    from patentqa.infer.engine import Sampling
    from patentqa.infer.engines import make_engine
    from patentqa.tracking import atomic_write

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


def chain_spec(cfg: Any) -> dict[str, Any]:
    """What the build looks up in the chains cache (the same keys ``generate_chains`` wrote)."""
    settings = cfg.data.chains
    return {"model": str(cfg.model.path), "checkpoint": cfg.checkpoint, "infer": cfg.infer.name,
            "threshold": float(settings.threshold), "max_new_tokens": int(settings.max_new_tokens)}


def main() -> None:
    import hydra

    from patentqa.config import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(cfg: Any) -> None:
        print(json.dumps(generate_chains(cfg), ensure_ascii=False, indent=2))

    sys.argv[0] = "patentqa.data.chains"
    run()


if __name__ == "__main__":
    main()
