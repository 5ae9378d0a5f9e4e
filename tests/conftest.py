"""Shared fixtures: the synthetic patent set, the tiny models, two real LoRA adapters and prompts of
every form, built once per session (the first three cached across sessions).

Both are cached under ``$PATENTQA_CACHE`` (default: ``<repo>/.cache``) so a second test run
reuses them; each builder writes atomically, so a killed run never leaves a half-built copy.

``make test`` runs the suite in pytest-xdist workers (one file per worker at a time): a session fixture
that costs a real training run is built once for all workers (``built_once``), and the controller
searches every file the session wrote for the fake API keys once all workers are done.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from filelock import FileLock

# One OpenMP thread for torch in this process and every process a test starts (set before torch is imported;
# torchrun sets 1 per rank on its own, vLLM binds its own): with two xdist workers on two cores, two torch
# processes of two spinning threads each ran the smoke training ~4x slower than alone; with one thread each,
# each keeps a core. The same in one process (WORKERS=0), so a test's numbers do not depend on the worker count.
os.environ["OMP_NUM_THREADS"] = "1"
from patentqa.data.prompts import PageImage, Prompt, PromptConfig, build_prompt, classifier_prompt, style_prompt

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # vendored reference material (fixtures/README.md)


def cache_root() -> Path:
    return Path(os.environ.get("PATENTQA_CACHE", REPO / ".cache"))


def kill_after_checkpoints(argv: list[str], run_dir: Path, n: int, log: Path, env: dict[str, str] | None = None,
                           timeout_s: float = 600) -> list[Any]:
    """Run a training command, kill -9 its whole process group (swift and its parent, mid-run) once ``run_dir``
    holds ``n`` complete checkpoints; return the complete checkpoints then (at least ``n``)."""
    import signal
    import time

    from patentqa.tracking import checkpoints

    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while len(checkpoints(run_dir / "swift")) < n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    done = checkpoints(run_dir / "swift")
    assert len(done) >= n, log.read_text()[-3000:]
    return done


# Fake keys set for the whole session: every run, Hydra/submitit dir, node log, cache and output the
# tests make is searched for them when the session ends (pytest_sessionfinish below; tests/test_no_secrets.py)
SESSION_SECRETS = {"WANDB_API_KEY": "wandb-fake-session-3f9a1c7e5b2d4086", "OPENAI_API_KEY": "sk-fake-session-7c1e9b3a5d"}


def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp root, shared by all xdist workers (each worker's own basetemp lies inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]) -> dict:
    """``build(dir)`` once per session across xdist workers (the others wait for it and read its result)."""
    work = session_root(tmp_path_factory) / f"shared-{name}"
    done = work / "built.json"
    with FileLock(f"{work}.lock"):
        if not done.is_file():
            work.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(work)), encoding="utf-8")
    return json.loads(done.read_text(encoding="utf-8"))


def files_holding(roots: list[Path], secrets: list[str]) -> list[str]:
    """Files under ``roots`` (binary ones too) that contain any of ``secrets``."""
    roots = [str(r) for r in roots if r.exists()]
    if not roots:
        return []
    args = [arg for secret in secrets for arg in ("-e", secret)]
    found = subprocess.run(["grep", "-rlaF", *args, *roots], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: nothing found; 2: grep failed
    return found.stdout.splitlines()


# The test files that take longest (make test's --durations), started first: two xdist workers take files in
# this order (make test passes --no-loadscope-reorder, else xdist starts the files with most tests first), so
# the suite does not end waiting on one long file; files not named keep their collection order after these.
LONGEST_FIRST = ("e2e/test_gpucheck.py", "e2e/test_eval.py", "e2e/test_vllm.py", "e2e/test_qwen3_5_e2e.py",
                 "e2e/test_minicpm_v_e2e.py",
                 "e2e/test_scale.py", "e2e/test_preemption.py",
                 "e2e/test_variants.py", "e2e/test_search.py", "e2e/test_ocr.py", "e2e/test_infer.py", "e2e/test_resume.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files in ``LONGEST_FIRST`` order, then the rest as collected (tests within a file keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests = Path(__file__).resolve().parent

    def position(item: pytest.Item) -> int:
        path = Path(str(item.fspath))
        return rank.get(path.relative_to(tests).as_posix() if path.is_relative_to(tests) else "", len(rank))
    items.sort(key=position)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every test (all workers): no file the session wrote holds a fake key (SESSION_SECRETS)."""
    if hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return  # a worker: the controller searches once, when all of them are done
    roots = [session.config._tmp_path_factory.getbasetemp(), cache_root(), REPO / "runs", REPO / "outputs",
             REPO / "multirun"]
    leaked = files_holding(roots, list(SESSION_SECRETS.values()))
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"FAILED no secrets: API keys written to {leaked[:20]}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def session_secrets() -> dict[str, str]:
    """Fake API keys in the environment of every test and every subprocess it starts."""
    saved = {name: os.environ.get(name) for name in SESSION_SECRETS}
    os.environ.update(SESSION_SECRETS)
    yield SESSION_SECRETS
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def lora_r8_cfg(tmp_path_factory: pytest.TempPathFactory):
    """``+exp=lora_r8`` (the 32B recipe) with a scratch root and the session's cache: what the dry-run
    plans read (the tiny tokenizer counts text tokens when the 32B one is not on disk)."""
    from patentqa.config import compose

    return compose(["+exp=lora_r8", f"paths.root={tmp_path_factory.mktemp('lora_r8')}",
                    f"paths.cache_dir={cache_root()}"])


@pytest.fixture(scope="session")
def reference() -> Path:
    """The seed's prompts and SFT rows, the 600 real questions and the metric oracle (tests/fixtures)."""
    return FIXTURES


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CCKS-layout patent set (12 documents, seed 0)."""
    from patentqa.data.synth.patents import SynthSpec, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthSpec(n_docs=12, seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_vl() -> Path:
    """Directory of the tiny random Qwen2.5-VL (model, tokenizer, processor, chat template)."""
    from patentqa.tiny import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(cache_root() / "tiny")


@pytest.fixture(scope="session")
def tiny_embedder() -> Path:
    """Directory of the tiny random Qwen2-VL that stands in for GME."""
    from patentqa.tiny import tiny_qwen2_vl_embedder

    return tiny_qwen2_vl_embedder(cache_root() / "tiny")


def smoke_run_dir(root: Path, *overrides: str) -> Path:
    """``root/runs/smoke/a`` as `patentqa.train` leaves a run before training: its resolved config.yaml
    (+exp=smoke on the tiny models, data and cache under ``root``; composing loads nothing)."""
    from omegaconf import OmegaConf

    from patentqa.config import compose

    tiny = cache_root() / "tiny"
    cfg = compose(["+exp=smoke", f"paths.root={root}", f"paths.cache_dir={root}/cache", f"model.path={tiny}/qwen2_5_vl",
                   f"model.embedder_path={tiny}/qwen2_vl_gme", *overrides])
    run_dir = root / "runs" / "smoke" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    return run_dir


ADAPTER_STEPS = 4


@pytest.fixture(scope="session")
def adapters(tiny_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Checkpoints 2 and 4 of one real `swift sft` LoRA run (r8, high lr: the adapters matter), one for all
    workers; e2e tier."""
    from swift_tiny_run import tiny_lora_sft  # tests/e2e, on the path when e2e tests run

    def build(work: Path) -> dict:
        return {"run_dir": str(tiny_lora_sft(tiny_vl, work, ADAPTER_STEPS, "--save_steps", "2"))}
    run_dir = Path(built_once(tmp_path_factory, "engine_sft", build)["run_dir"])
    a, b = run_dir / "checkpoint-2", run_dir / f"checkpoint-{ADAPTER_STEPS}"
    for checkpoint in (a, b):
        assert (checkpoint / "adapter_config.json").is_file(), checkpoint
    return a, b


def smoke_run_overrides(root: Path, model: str = "tiny_qwen3_vl") -> list[str]:
    """The overrides of ``smoke_run_cfg`` (also what a CLI run of the same training is given)."""
    from patentqa.config import compose

    tiny = cache_root() / "tiny"
    path = compose([f"model={model}", f"paths.cache_dir={tiny.parent}"]).model.path  # cache_dir/tiny/<family dir>
    return ["+exp=smoke", f"model={model}", f"paths.root={root}", f"paths.cache_dir={root}/cache",
            f"model.path={path}", f"model.embedder_path={tiny}/qwen2_vl_gme", "retrieval=none",
            "data.synth.n_docs=6", "logger=none", "train.max_steps=4", "train.save_steps=2",
            "train.eval_steps=2", "train.learning_rate=2e-2", "train.lora_rank=8", "train.lora_alpha=32",
            "eval.after_train=false"]


def smoke_run_cfg(root: Path, model: str = "tiny_qwen3_vl") -> Any:
    """+exp=smoke model=``model`` (a tiny family: tiny_qwen3_vl, tiny_qwen2_vl), 4 LoRA steps saved at 2 and 4
    (retrieval=none, 6 documents) under ``root``; r8 at lr 2e-2 like ``adapters``: 4 steps visibly change the model
    (vLLM parity asserts the adapters matter)."""
    from patentqa.config import compose

    return compose(smoke_run_overrides(root, model))


def smoke_run(tmp_path_factory: pytest.TempPathFactory, model: str) -> tuple[Any, SimpleNamespace]:
    """(config, result) of the session's one real training run of a tiny family (``smoke_run_cfg``):
    ``patentqa.train`` (data stage → ``swift sft --model_type <family> --template <family>``), built once for all
    workers; e2e tier. ``result`` has the fields of ``TrainResult`` the tests read (run_dir, command, exit_code,
    checkpoints)."""
    from patentqa.models import family_of
    from patentqa.train.train import train

    cfg = smoke_run_cfg(session_root(tmp_path_factory) / f"shared-{model}_sft", model)
    family_of(cfg.model).build_tiny(cache_root() / "tiny")

    def build(work: Path) -> dict:
        result = train(smoke_run_cfg(work, model), work / "runs" / "smoke" / "a")
        return {"run_dir": str(result.run_dir), "command": result.command, "exit_code": result.exit_code,
                "checkpoints": [[c.step, str(c.path)] for c in result.checkpoints]}
    built = built_once(tmp_path_factory, f"{model}_sft", build)
    result = SimpleNamespace(run_dir=Path(built["run_dir"]), command=built["command"], exit_code=built["exit_code"],
                             checkpoints=[SimpleNamespace(step=s, path=Path(p)) for s, p in built["checkpoints"]])
    return cfg, result


def run_adapters(run: tuple[Any, SimpleNamespace]) -> tuple[Path, Path]:
    """Checkpoints 2 and 4 of a ``smoke_run``, like ``adapters``."""
    a, b = (c.path for c in run[1].checkpoints[-2:])
    assert (a.name, b.name) == ("checkpoint-2", f"checkpoint-{ADAPTER_STEPS}"), (a, b)
    for checkpoint in (a, b):
        assert (checkpoint / "adapter_config.json").is_file(), checkpoint
    return a, b


@pytest.fixture(scope="session")
def qwen3_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SimpleNamespace]:
    """The tiny Qwen3-VL's session run (``smoke_run``)."""
    return smoke_run(tmp_path_factory, "tiny_qwen3_vl")


@pytest.fixture(scope="session")
def qwen3_adapters(qwen3_run: tuple[Any, SimpleNamespace]) -> tuple[Path, Path]:
    return run_adapters(qwen3_run)


@pytest.fixture(scope="session")
def qwen2_vl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SimpleNamespace]:
    """The tiny Qwen2-VL's session run (``smoke_run``)."""
    return smoke_run(tmp_path_factory, "tiny_qwen2_vl")


@pytest.fixture(scope="session")
def minicpm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SimpleNamespace]:
    """The tiny MiniCPM-V 4.6's session run (``smoke_run``)."""
    return smoke_run(tmp_path_factory, "tiny_minicpm_v_4_6")


@pytest.fixture(scope="session")
def minicpm_adapters(minicpm_run: tuple[Any, SimpleNamespace]) -> tuple[Path, Path]:
    return run_adapters(minicpm_run)


@pytest.fixture(scope="session")
def qwen2_vl_adapters(qwen2_vl_run: tuple[Any, SimpleNamespace]) -> tuple[Path, Path]:
    return run_adapters(qwen2_vl_run)


def assert_identical_but_at_near_ties(parity: dict, label: str, identical_share: float) -> None:
    """Every greedy difference between the engines sits at a near-tie (transformers' top-2 gap <= NEAR_TIE), and at
    least ``identical_share`` of the answers are identical; with no near-tie the report exits 0."""
    from patentqa.infer.lora_probe import NEAR_TIE, near_ties
    from patentqa.infer.parity import exit_status, format_report

    ties = near_ties(parity)
    print(f"{label} parity: {parity['identical']}/{parity['total']} identical, {len(ties)} near-tie(s) "
          f"(top-2 gap <= {NEAR_TIE})")
    real = [c for c in parity["differences"] if c not in ties]
    assert not real, format_report(parity)
    assert parity["identical"] >= int(identical_share * parity["total"] + 1e-9), format_report(parity)
    if not ties:
        assert exit_status(parity) == 0


def drawn_page(path: Path, number: int, size: tuple[int, int] = (392, 560)) -> PageImage:
    """A small drawn patent page with its figure label (the alignment command's pages, captioned)."""
    from patentqa.infer.align import drawn_page as page

    return page(path, number, size, caption=True)


@pytest.fixture(scope="session")
def form_prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Prompt]:
    """Every prompt form the pipeline sends: with_context, figure_only, document, classifier, style."""
    root = tmp_path_factory.mktemp("form_pages")
    pages = [drawn_page(root / f"p{i}.png", i) for i in range(1, 7)]
    config = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})
    question = "在文件中第{}页的示意图中，部件{}位于部件{}的什么位置？"
    return [
        build_prompt(config, question.format(1, 1, 2), "with_context", pages[0], [pages[1], pages[2]]),
        build_prompt(config, question.format(4, 4, 5), "with_context", pages[3], [pages[4]]),
        build_prompt(config, question.format(2, 2, 3), "figure_only", pages[1], []),
        build_prompt(config, question.format(6, 6, 7), "figure_only", pages[5], []),
        build_prompt(config, "该专利要解决的技术问题是什么？", "document", None, [pages[0], pages[3]]),
        classifier_prompt(question.format(3, 3, 4)),
        style_prompt("部件3位于部件4的左侧", ["部件1位于部件2的上方", "左侧"]),
    ]
