"""Bad input to the data commands: one clear error line with the path and the reason, a non-zero exit,
and nothing half-written (the rest of the work goes on where it can)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fitz
from PIL import Image, ImageDraw

from conftest import REPO, smoke_run_dir


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_data_stage_on_a_missing_dataset_says_which_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-set"
    done = run("patentqa.data", "data=ccks2025", f"data.dir={missing}", f"paths.root={tmp_path}",
               f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert done.returncode == 1
    assert error_lines(done) == [f"error: no usable train question in {missing}: "
                                 f"{missing}/train/train.jsonl: question file not found"]
    assert files_under(tmp_path / "cache" / "datasets") == []  # no dataset half-built


def test_ocr_on_a_missing_dataset_says_which_file(tmp_path: Path) -> None:
    done = run("patentqa.data.ocr", f"dir={tmp_path / 'nope'}", "split=train", f"cache_dir={tmp_path / 'cache'}",
               cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: no document to OCR in dir={tmp_path / 'nope'} split=train: "
                                 f"{tmp_path / 'nope'}/train/train.jsonl: question file not found"]
    assert files_under(tmp_path / "cache") == []


def test_ccitt_refuses_a_missing_src_and_an_out_inside_src(tmp_path: Path) -> None:
    done = run("patentqa.data.synth.ccitt", f"src={tmp_path / 'nope'}", f"out={tmp_path / 'g4'}", cwd=tmp_path)
    assert done.returncode == 2 and error_lines(done) == [f"error: src={tmp_path / 'nope'}: no such directory"]
    (tmp_path / "set").mkdir()
    done = run("patentqa.data.synth.ccitt", f"src={tmp_path / 'set'}", f"out={tmp_path / 'set' / 'g4'}", cwd=tmp_path)
    assert done.returncode == 2 and "inside src=" in error_lines(done)[0]
    assert not (tmp_path / "g4").exists() and not (tmp_path / "set" / "g4").exists()


def test_ccitt_reports_a_corrupt_pdf_and_writes_the_rest(tmp_path: Path) -> None:
    docs = tmp_path / "set" / "train" / "documents"
    docs.mkdir(parents=True)
    scan = tmp_path / "scan.png"
    image = Image.new("L", (200, 280), 255)
    ImageDraw.Draw(image).rectangle((20, 20, 120, 60), fill=0)
    image.save(scan)
    with fitz.open() as pdf:
        pdf.new_page(width=200, height=280).insert_image(fitz.Rect(0, 0, 200, 280), filename=str(scan))
        pdf.save(docs / "good.pdf")
    with fitz.open() as pdf:  # a text page, no scan
        pdf.new_page(width=200, height=280).insert_text((20, 40), "typed")
        pdf.save(docs / "typed.pdf")
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4\n this is not a pdf")
    (tmp_path / "set" / "train" / "train.jsonl").write_text('{"question": "q", "document": "good.pdf", "answer": "a"}\n')
    out = tmp_path / "g4"
    done = run("patentqa.data.synth.ccitt", f"src={tmp_path / 'set'}", f"out={out}", cwd=REPO)
    assert done.returncode == 1, done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2 and all(p.endswith("(left out)") for p in problems), problems
    assert problems[0].startswith(f"problem: {docs / 'bad.pdf'}: ")
    assert problems[1] == f"problem: {docs / 'typed.pdf'}: ValueError: page 1 holds no scanned image (a text page is no scan) (left out)"
    assert "wrote 1 CCITT G4 PDFs" in done.stdout
    assert [p.relative_to(out).as_posix() for p in files_under(out)] == ["train/documents/good.pdf", "train/train.jsonl"]
    with fitz.open(out / "train" / "documents" / "good.pdf") as g4:
        assert g4.page_count == 1


# The model commands: patentqa.infer, patentqa.eval, patentqa.infer.parity. Each refuses bad input before a
# dataset is built, a W&B run starts or a model loads.

def written(root: Path, *keep: Path) -> list[Path]:
    """Files under ``root`` besides Hydra's record of the command (its run dir: .hydra/, the log) and ``keep``."""
    return [p for p in files_under(root) if ".hydra" not in p.parts and p.name != "__main__.log" and p not in keep]


def infer_args(root: Path, *extra: str) -> list[str]:
    return ["patentqa.infer", "+exp=smoke", f"paths.root={root}", f"paths.cache_dir={root}/cache", *extra]


def test_infer_refuses_an_unknown_split_before_building_anything(tmp_path: Path) -> None:
    done = run(*infer_args(tmp_path, "split=validation"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert error_lines(done) == ["error: split=validation: unknown split; expected one of dev, heldout, test"]
    assert written(tmp_path) == []


def test_infer_refuses_a_checkpoint_that_is_none(tmp_path: Path) -> None:
    missing, empty = tmp_path / "checkpoint-9", tmp_path / "checkpoint-3"
    (empty / "optimizer.pt").parent.mkdir()
    (empty / "optimizer.pt").write_bytes(b"not an adapter")
    done = run(*infer_args(tmp_path, f"checkpoint={missing}"), cwd=tmp_path)
    assert done.returncode == 2 and error_lines(done) == [f"error: checkpoint={missing}: no such directory"]
    done = run(*infer_args(tmp_path, f"checkpoint={empty}"), cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: checkpoint={empty}: not a checkpoint (no adapter_config.json, no config.json)"]
    assert written(tmp_path, empty / "optimizer.pt") == []


def test_eval_refuses_a_run_with_no_complete_checkpoint(tmp_path: Path) -> None:
    done = run("patentqa.eval", f"run_dir={tmp_path / 'nope'}", cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: run_dir={tmp_path / 'nope'}: no config.yaml (not a patentqa training run)"]
    run_dir = smoke_run_dir(tmp_path)
    partial = run_dir / "swift" / "v0-x" / "checkpoint-2"  # killed while saving: no trainer_state.json
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{}")
    done = run("patentqa.eval", f"run_dir={run_dir}", "eval.include_base=false", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert error_lines(done) == [f"error: {run_dir / 'swift'}: no complete checkpoint (checkpoint-N with "
                                 "trainer_state.json), and eval.include_base=false, no eval.baselines: nothing to evaluate"]
    assert written(tmp_path, run_dir / "config.yaml", partial / "adapter_config.json") == []  # no dataset, eval/, wandb/


def test_eval_on_an_empty_dev_split_says_so_and_starts_no_wandb_run(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    run_dir = smoke_run_dir(tmp_path, "data.synth.n_docs=3", "data.synth.questions_per_doc=2", "data.split.dev=0")
    done = run("patentqa.eval", f"run_dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = error_lines(done)
    assert line.startswith(f"error: {tmp_path / 'cache' / 'datasets'}/") and line.endswith(
        ": the dev split is empty: raise data.split.dev or use more documents"), line
    assert not (run_dir / "eval").exists() and not (run_dir / "wandb").exists()


def test_parity_refuses_a_dir_that_is_no_run_and_a_run_with_no_checkpoint(tmp_path: Path) -> None:
    done = run("patentqa.infer.parity", f"run_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and error_lines(done) == [f"error: run_dir={tmp_path}: no config.yaml (not a patentqa "
                                                          "training run)"]
    run_dir = smoke_run_dir(tmp_path)
    done = run("patentqa.infer.parity", f"run_dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done) == [f"error: {run_dir / 'swift'}: no complete checkpoint (checkpoint-N with "
                                 "trainer_state.json): nothing of this run to compare"]
    assert written(tmp_path, run_dir / "config.yaml") == []


def test_parity_refuses_a_vision_tower_lora_before_anything_loads(tmp_path: Path) -> None:
    """A checkpoint trained with freeze_vit=false: vLLM would drop its tower weights; one line, exit 2, before the
    data stage or any model (it was a traceback after transformers had answered)."""
    from test_strict_loading import fake_adapter

    run_dir = smoke_run_dir(tmp_path)
    checkpoint = fake_adapter(run_dir / "swift" / "v0-x" / "checkpoint-2", tower=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    before = files_under(tmp_path)
    done = run("patentqa.infer.parity", f"run_dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = error_lines(done)
    assert line.startswith(f"error: {checkpoint / 'adapter_model.safetensors'} holds 2 LoRA weights of the vision "
                           "tower") and "freeze_vit=false" in line
    assert "Traceback" not in done.stderr and files_under(tmp_path) == before  # no dataset, no report
