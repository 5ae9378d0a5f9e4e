"""Reasoning-chain targets for ``prompt.target=cot``: a short chain, then one line "答案：…".

Where chains come from:

- a synthetic set: the generator's truth (``{split}/truth/*.json``) says which parts a question
  is about, where their labels and leader lines are and which side one lies on, or which page
  states the fact; ``synthetic_chain`` writes that down;
- real data: ``python -m patentqa.eval.chains +exp=NAME`` asks a model for a chain per *training*
  question and keeps those whose final answer scores (rejection sampling); this module says where
  they are cached (``CACHE/chains/<dataset>-<hash>/chains.jsonl``) and reads the accepted ones.

Chains go into training rows only: dev and test rows keep the plain answer, and evaluation reads
the final line (``final_answer``; a reply without it is scored on its last line, and counted).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

from patentqa.tracking import read_jsonl

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


def cached_chains(path: Path) -> dict[str, str]:
    """Accepted chains of a cache file, by question id."""
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    return {r["id"]: r["chain"] for r in rows if r["accepted"]}


def chain_spec(cfg: Any) -> dict[str, Any]:
    """What the build looks up in the chains cache (the same keys ``patentqa.eval.chains`` wrote)."""
    settings = cfg.data.chains
    return {"model": str(cfg.model.path), "checkpoint": cfg.checkpoint, "infer": cfg.infer.name,
            "threshold": float(settings.threshold), "max_new_tokens": int(settings.max_new_tokens)}


if __name__ == "__main__":
    sys.exit("patentqa.data.chains is no command: a model's chains are asked by "
             "python -m patentqa.eval.chains +exp=NAME [checkpoint=DIR]")
