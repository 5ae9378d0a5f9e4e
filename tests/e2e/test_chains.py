"""``python -m patentqa.eval.chains``, rejection sampling end to end: a tiny model tuned on chain targets
(+exp/ablate=cot, 300 steps: it learns the "答案：" line) is asked for a chain per training question of a corpus
without a generator's truth; the chains whose final answer scores are cached, and a cot build puts them in
training rows only."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cache_root
from patentqa.config import compose
from patentqa.data.build import build_dataset
from patentqa.data.chains import FINAL, cached_chains
from patentqa.tracking import read_jsonl
from patentqa.train.train import train

pytestmark = pytest.mark.e2e


def overrides(tmp: Path, *extra: str) -> list[str]:
    tiny = cache_root() / "tiny"
    return ["+exp=smoke", "+exp/ablate=cot", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache",
            f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", "data.synth.n_docs=6",
            "logger=none", "retrieval=none", "data.chains.max_new_tokens=96", *extra]


@pytest.fixture(scope="module")
def asked(tmp_path_factory: pytest.TempPathFactory, tiny_vl, tiny_embedder) -> tuple[Path, list[str], dict]:
    """(tmp, overrides of the truth-less copy, the command's printed summary)."""
    tmp = tmp_path_factory.mktemp("chains")
    result = train(compose(overrides(tmp, "train.max_steps=300", "train.save_steps=300", "eval.after_train=false")),
                   tmp / "runs" / "cot")
    checkpoint = result.checkpoints[-1].path
    data = Path(compose(overrides(tmp)).data.dir)
    plain = tmp / "data" / "no-truth"  # the same corpus as a user's real data: no truth to draw chains from
    shutil.copytree(data, plain, ignore=shutil.ignore_patterns("truth"))
    args = overrides(tmp, f"data.dir={plain}", f"checkpoint={checkpoint}")
    done = subprocess.run([sys.executable, "-m", "patentqa.eval.chains", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout[done.stdout.rindex("\n{\n") + 1:]  # after the stages' log lines: the summary
    return tmp, args, json.loads(printed)


def test_chains_are_accepted_and_rejected_by_their_final_answer_and_cached(asked) -> None:
    _, _, summary = asked
    rows = read_jsonl(summary["cache"])  # a tiny model's chains hold U+2028 and the like: never str.splitlines
    assert len(rows) == summary["questions"] > 0
    accepted = [r for r in rows if r["accepted"]]
    assert len(accepted) == summary["accepted"] and 0 < len(accepted) < len(rows), summary  # both outcomes occur
    assert all(r["has_final_line"] and r["chain"] and r["score"] >= 0.5 for r in accepted)
    assert all(not r["has_final_line"] or r["score"] < 0.5 or not r["chain"] for r in rows if not r["accepted"])
    assert summary["without_final_line"] == sum(not r["has_final_line"] for r in rows)
    print(f"\nchains: {summary['accepted']} of {summary['questions']} accepted; by kind {summary['acceptance_by_kind']}")


def test_a_cot_build_takes_the_accepted_chains_into_training_rows_only(asked) -> None:
    tmp, args, summary = asked
    build = build_dataset(compose(args))
    rows = read_jsonl(summary["cache"])
    kept = {r["id"]: r["chain"] for r in rows if r["accepted"]}
    assert any(r["chain"] and not r["accepted"] for r in rows)  # a chain was written and rejected: it must not train
    assert cached_chains(Path(summary["cache"])) == kept
    train = read_jsonl(build.out_dir / "train.jsonl")
    with_chain = [r for r in train if r["chain"]]
    assert with_chain and {r["id"] for r in with_chain} == set(kept)
    for row in with_chain:
        assert row["messages"][-1]["content"].startswith(kept[row["id"]]) and FINAL in row["messages"][-1]["content"]
    assert not any(r["chain"] for r in train if r["id"] not in kept)  # a rejected chain trains nothing
    dev = read_jsonl(build.out_dir / "dev.jsonl")  # held-out rows and records keep plain gold answers
    assert dev and not any(r["chain"] or FINAL in r["messages"][-1]["content"] for r in dev)
    for name in ("dev_eval.jsonl", "test_eval.jsonl"):
        assert not any(FINAL in str(r["answer"]) for r in read_jsonl(build.out_dir / name)), name
