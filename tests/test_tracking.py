"""Run manifest, secret scrubbing and the W&B run shared by a job and its ``swift sft`` child.

Offline only (WANDB_MODE=offline, every W&B directory under tmp). wandb 0.31 ships no
Python reader for ``.wandb`` files, so ``wandb_records`` reads the LevelDB-log framing
and parses the records with wandb's own protobuf classes.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patentqa.tracking import (LOCK_DIR, MASK, Tracker, git_state, is_secret_name, lock_state, result_env,
                               run_manifest, scrub, secret_env_names, update_manifest, write_json_atomic)

FAKE_WANDB_KEY = "sk-fake-1234567890abcdef1234567890abcdef"
FAKE_HF_TOKEN = "hf_fakeTOKEN0987654321zyxw"
WANDB = {"name": "wandb", "project": "patentqa-test", "entity": None, "mode": "offline"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Offline, silent W&B with every W&B directory under tmp and two fake secrets set."""
    for name in [k for k in os.environ if k.startswith("WANDB_")] + ["NODE_RANK", "OPENAI_API_KEY"]:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in [("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    yield tmp_path
    os.environ.pop("WANDB_SERVICE", None)  # wandb.init left our wandb-core's address for children


def wandb_records(path: Path) -> list:
    """All records of a ``.wandb`` file (32 KiB blocks of ``crc:u32 len:u16 type:u8`` chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def segments(run_dir: Path, run_id: str) -> list[list]:
    """Records of each offline segment of a run, by start time (the order `wandb sync` uses).

    ``finish()`` returns once wandb-core has handled the exit; its writer may append the exit
    record a moment later, so wait (briefly) for it.
    """
    out = []
    for path in (run_dir / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"):
        deadline = time.monotonic() + 15
        while not of(records := wandb_records(path), "exit") and time.monotonic() < deadline:
            time.sleep(0.05)
        out.append(records)
    return sorted(out, key=lambda records: of(records, "run")[0].start_time.ToNanoseconds())


def of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history_keys(records: list) -> set[str]:
    return {item.key or "/".join(item.nested_key) for h in of(records, "history") for item in h.item}


def assert_no_secret(root: Path) -> None:
    leaked = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
              and any(s.encode() in p.read_bytes() for s in (FAKE_WANDB_KEY, FAKE_HF_TOKEN))]
    assert not leaked, f"secret written to {leaked}"


def test_secret_names_are_whole_words() -> None:
    for name in ["WANDB_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "hub_token", "apiKey", "db.password",
                 "client_secret", "x-api-key", "GITHUB_TOKEN", "aws_secret_access_key"]:
        assert is_secret_name(name), name
    for name in ["max_new_tokens", "tokenizer", "TOKENIZERS_PARALLELISM", "cache_key",
                 "keywords", "MAX_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM"]:
        assert not is_secret_name(name), name


def test_scrub(env: Path) -> None:
    assert secret_env_names() == ["HF_TOKEN", "WANDB_API_KEY"]
    obj = {"api_key": "abc", "nested": {"HF_Token": "short", "max_new_tokens": 16, "tokenizer": "/m/tok"},
           "note": f"key is {FAKE_WANDB_KEY}!", "argv": ["run.py", "--hub_token", "xyz", "infer.api_key=s3cr3t",
                                                         "--lr=1e-4"],
           "metrics": {"train/token_acc": 0.5, "token": None}, "tuple": (FAKE_HF_TOKEN, 1)}
    out = scrub(obj)
    assert out == {"api_key": MASK, "nested": {"HF_Token": MASK, "max_new_tokens": 16, "tokenizer": "/m/tok"},
                   "note": f"key is {MASK}!", "argv": ["run.py", "--hub_token", MASK, f"infer.api_key={MASK}",
                                                       "--lr=1e-4"],
                   "metrics": {"train/token_acc": 0.5, "token": None}, "tuple": [MASK, 1]}
    assert obj["api_key"] == "abc"  # the input is not modified


def test_manifest(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in result_env():  # e.g. TOKENIZERS_PARALLELISM set by an earlier test
        if not name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAX_PIXELS", "1229312")
    monkeypatch.setenv("PATENTQA_CACHE", "/tmp/c")
    monkeypatch.setenv("PATENTQA_TOKEN", "not-allowed-even-by-prefix")
    monkeypatch.setenv("SOME_UNRELATED", "x")
    config = {"name": "smoke", "infer": {"api_key": "inline", "base_url": f"http://x/?k={FAKE_HF_TOKEN}"}}
    manifest = run_manifest(config, extra={"seeds": {"train": 0}})

    assert manifest["state"] == "running" and manifest["seeds"] == {"train": 0}
    assert manifest["env"] == result_env() == {"MAX_PIXELS": "1229312", "PATENTQA_CACHE": "/tmp/c",
                                               "WANDB_DIR": os.environ["WANDB_DIR"], "WANDB_MODE": "offline"}
    assert set(manifest["versions"]) >= {"patentqa", "ms-swift", "transformers", "peft", "torch", "wandb",
                                         "hydra-core", "pymupdf", "qwen-vl-utils", "torchvision", "deepspeed"}
    assert manifest["versions"]["wandb"].startswith("0.") and manifest["versions"]["patentqa"]
    assert manifest["python"] and manifest["hostname"] and manifest["started_at"]
    git = manifest["git"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git["sha"] == head and re.fullmatch(r"[0-9a-f]{40}", head) and isinstance(git["dirty"], bool)  # a clone
    assert git_state(env) is None  # tmp is no git checkout
    assert manifest["config"]["infer"] == {"api_key": MASK, "base_url": f"http://x/?k={MASK}"}

    path = write_json_atomic(env / "run" / "manifest.json", manifest)
    update_manifest(path, state="failed", exit_code=1, error=f"boom {FAKE_WANDB_KEY}")
    final = json.loads(path.read_text())
    assert final["state"] == "failed" and final["exit_code"] == 1 and final["ended_at"]
    assert final["error"] == f"boom {MASK}" and final["config"] == manifest["config"]
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp files left
    assert_no_secret(env / "run")


def test_manifest_names_the_lock_and_its_hash(env: Path) -> None:
    import hashlib
    from importlib import metadata

    lock = run_manifest({})["lock"]  # the checkout's requirements/lock-cpu.txt: what `make setup` installed
    path = LOCK_DIR / "lock-cpu.txt"
    assert lock["file"] == "requirements/lock-cpu.txt"
    assert lock["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lock["packages"] == sum(1 for line in path.read_text().splitlines() if line and not line.startswith("#"))

    # a lock pinning this environment's own versions matches; a changed pin is named, a missing package too
    pins = {"pytest": metadata.version("pytest"), "omegaconf": metadata.version("omegaconf")}
    (env / "locks").mkdir()
    lock_file = env / "locks" / "lock-cpu.txt"
    lock_file.write_text("# made by a test\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()))
    exact = lock_state(env / "locks")
    assert exact == {"file": "locks/lock-cpu.txt", "sha256": hashlib.sha256(lock_file.read_bytes()).hexdigest(),
                     "packages": 2, "differ": 0, "differing": []}
    lock_file.write_text(f"pytest==0.0.1\nomegaconf=={pins['omegaconf']}\nno-such-package==1.0\n")
    (env / "locks" / "lock-gpu.txt").write_text("torch===0.0.0\npytest==0.0.2\nomegaconf==0.0.3\n")
    drifted = lock_state(env / "locks")  # the lock closest to what is installed
    assert drifted["file"] == "locks/lock-cpu.txt" and drifted["differ"] == 2
    assert drifted["differing"] == ["no-such-package missing (lock 1.0)", f"pytest {pins['pytest']} (lock 0.0.1)"]
    for name in ("lock-cpu.txt", "lock-gpu.txt"):
        (env / "locks" / name).unlink()
    absent = lock_state(env / "locks")  # an install outside a checkout: said, not an error
    assert absent["file"] is None and "no lock file" in absent["note"]


CHILD = textwrap.dedent("""
    # What `swift sft --report_to wandb --run_name NAME` runs on rank 0: transformers' own callback.
    import sys
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import WandbCallback

    args = TrainingArguments(output_dir=sys.argv[1], report_to=["wandb"], run_name=sys.argv[2])
    state, control, callback = TrainerState(), TrainerControl(), WandbCallback()
    callback.on_train_begin(args, state, control, model=None)
    for step, loss in [(1, 1.23), (2, 0.98)]:
        state.global_step = step
        callback.on_log(args, state, control, model=None, logs={"loss": loss, "learning_rate": 1e-4})
    print("child-run-id", callback._wandb.run.id)
    # no wandb.finish(): like swift, the process exit finishes the run (atexit)
""")


def test_parent_and_child_share_one_run(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "+exp=smoke", f"note={FAKE_WANDB_KEY}"])  # W&B records argv
    run_dir = env / "runs" / "smoke" / "t0"
    config = {"name": "smoke", "train": {"lr": 1e-4}, "api_key": "inline-secret",
              "leak": f"planted {FAKE_WANDB_KEY} {FAKE_HF_TOKEN}"}
    tracker = Tracker(WANDB, run_dir=run_dir, name="smoke-t0", group="smoke", tags=["smoke", "tiny"],
                      config=config)
    child = env / "child.py"
    child.write_text(CHILD)
    with tracker:
        write_json_atomic(run_dir / "manifest.json", run_manifest(config, extra={"wandb": tracker.info()}))
        with tracker.handoff() as child_env:
            assert child_env["WANDB_RUN_ID"] == tracker.run_id and child_env["WANDB_RESUME"] == "allow"
            assert tracker.swift_args() == ["--report_to", "wandb", "--run_name", "smoke-t0"]
            out = subprocess.run([sys.executable, str(child), str(run_dir / "swift"), tracker.name,
                                  f"--note={FAKE_HF_TOKEN}"],
                                 env={**os.environ, **child_env}, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-3000:]
            assert f"child-run-id {tracker.run_id}" in out.stdout
        tracker.log({"eval/rouge1": 0.41}, step=2)
        tracker.summary({"best/checkpoint": 2})

    parent_first, child_seg, parent_last = segments(run_dir, tracker.run_id)
    for seg in (parent_first, child_seg, parent_last):
        (run,) = of(seg, "run")
        assert (run.run_id, run.run_group, run.display_name) == (tracker.run_id, "smoke", "smoke-t0")
        assert list(run.tags) == ["smoke", "tiny"]
        assert of(seg, "environment") == []  # no metadata record (it would hold argv, git remote)
        assert [e.exit_code for e in of(seg, "exit")] == [0]
    assert {"train/loss", "train/learning_rate", "train/global_step"} <= history_keys(child_seg)
    files = list((run_dir / "wandb").glob(f"offline-run-*-{tracker.run_id}*/run-{tracker.run_id}.wandb"))
    assert len(files) == 3 and sum(b"train/loss" in f.read_bytes() for f in files) == 1  # raw bytes too
    assert {"eval/rouge1", "train/global_step"} <= history_keys(parent_last)
    config_keys = {item.key for c in of(parent_first, "config") + [run.config for run in of(parent_first, "run")]
                   for item in c.update}
    assert {"name", "train", "api_key"} <= config_keys
    assert_no_secret(run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["wandb"]["id"] == tracker.run_id


def test_failed_job_is_marked_failed_and_next_job_is_independent(env: Path) -> None:
    import wandb

    failed = Tracker(WANDB, run_dir=env / "a", name="a", group="sweep")
    with pytest.raises(RuntimeError, match="boom"):
        with failed:
            failed.log({"x": 1})
            raise RuntimeError("boom")
    assert wandb.run is None
    assert [e.exit_code for e in of(segments(env / "a", failed.run_id)[-1], "exit")] == [1]

    # failing while a child owns the run: the parent re-opens a segment to record the failure
    during = Tracker(WANDB, run_dir=env / "b", name="b", group="sweep")
    with pytest.raises(ValueError):
        with during, during.handoff():
            raise ValueError("child failed")
    assert [e.exit_code for s in segments(env / "b", during.run_id) for e in of(s, "exit")] == [0, 1]

    ok = Tracker(WANDB, run_dir=env / "c", name="c", group="sweep")
    with ok:
        ok.log({"x": 2}, step=5)
    assert ok.run_id not in (failed.run_id, during.run_id)
    (seg,) = segments(env / "c", ok.run_id)
    assert [e.exit_code for e in of(seg, "exit")] == [0] and "x" in history_keys(seg)
    ok.finish(3)  # already finished: no-op
    assert wandb.run is None


@pytest.mark.parametrize("logger", [None, {"name": "none"}])
def test_no_logger_is_a_no_op(env: Path, logger: dict | None) -> None:
    tracker = Tracker(logger, run_dir=env / "run", name="x", config={"a": 1})
    with tracker:
        with tracker.handoff() as child_env:
            assert child_env == {}
        tracker.log({"a": 1}, step=1)
        tracker.summary({"a": 1})
    assert tracker.env() == {} and tracker.swift_args() == [] and tracker.info() is None
    assert not (env / "run").exists()
    assert not any(p.name == "wandb" or p.name.startswith("offline-run") for p in env.rglob("*"))


def test_only_node_rank_zero_tracks(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_RANK", "1")
    tracker = Tracker(WANDB, run_dir=env / "run", name="x")
    with tracker:
        tracker.log({"a": 1})
    assert tracker.env() == {} and not (env / "run").exists()


@pytest.mark.e2e
def test_real_swift_sft_logs_into_the_run(env: Path, tiny_vl: Path) -> None:
    """The real `swift sft --report_to wandb` child (tiny model, CPU, ~20 s) joins the parent's run."""
    from PIL import Image

    swift = Path(sys.executable).with_name("swift")
    assert swift.exists(), f"the `swift` command (ms-swift) is missing from {swift.parent}: run `make setup`"
    rows = []
    for i in range(4):
        Image.new("RGB", (112, 112), (60 * i, 255 - 60 * i, 128)).save(image := env / f"p{i}.png")
        rows.append({"messages": [{"role": "user", "content": f"<image>第{i + 1}页的颜色？"},
                                  {"role": "assistant", "content": "红绿蓝黄"[i]}], "images": [str(image)]})
    data = env / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_dir = env / "run"
    tracker = Tracker(WANDB, run_dir=run_dir, name="sft-job", group="e2e", tags=["tiny"], config={"x": 1})
    with tracker:
        with tracker.handoff() as child_env:
            argv = [str(swift), "sft", "--model", str(tiny_vl), "--model_type", "qwen2_5_vl", "--template",
                    "qwen2_5_vl", "--check_model", "false", "--tuner_type", "lora", "--max_steps", "2",
                    "--per_device_train_batch_size", "1", "--logging_steps", "1", "--save_steps", "2",
                    "--dataloader_num_workers", "0", "--dataset", str(data), "--split_dataset_ratio", "0",
                    "--output_dir", str(run_dir / "swift"), *tracker.swift_args()]
            child = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES")}
            child.update(child_env, MAX_PIXELS=str(112 * 112), HF_HUB_OFFLINE="1", MODELSCOPE_OFFLINE="1")
            out = subprocess.run(argv, env=child, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        tracker.log({"ckpt/rouge1": 0.3}, step=2)

    _, child_seg, parent_last = segments(run_dir, tracker.run_id)
    (run,) = of(child_seg, "run")
    assert (run.run_id, run.run_group, run.display_name) == (tracker.run_id, "e2e", "sft-job")
    assert list(run.tags) == ["tiny"]
    assert {"train/loss", "train/global_step"} <= history_keys(child_seg)
    assert "ckpt/rouge1" in history_keys(parent_last)
    assert_no_secret(run_dir)


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path: Path) -> None:
    """Files follow the umask like open() (test_scale tells node 1's files from node 0's by it)."""
    from patentqa.tracking import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", b"{}")
        (tmp_path / "b.json").write_bytes(b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_jsonl_records_keep_line_separators_inside_strings(tmp_path) -> None:
    """json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 unescaped; a model's reply can hold them."""
    import json

    from patentqa.tracking import read_jsonl

    rows = [{"id": "a", "raw_answer": "左\u2028侧"}, {"id": "b", "raw_answer": "下\x85方\u2029"}, {"id": "c"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n", encoding="utf-8")
    assert read_jsonl(path) == rows
