"""Run every benchmark, rewrite benchmarks/RESULTS.md, print the ratio table last.

    python -m benchmarks                      # all, 3 repeats (~10-12 min on a busy 2-core machine)
    python -m benchmarks --quick              # small inputs, 1 repeat: checks that everything runs
    python -m benchmarks --only render,sweep  # some of them
    make bench

Each benchmark's own output (progress bars, swift's logs) goes to .cache/bench/logs/<name>.log.
Inputs that take long to make (the 300-DPI set, the trained checkpoints, the corpora) are
generated once under .cache/bench/ and reused by later runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from benchmarks.common import BENCH, Result, load1, machine

NAMES = ("render", "pipeline", "pipeline_vllm", "sweep", "rebuild", "scaling", "estimate", "ocr", "browse")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@contextmanager
def captured(log: Path) -> Iterator[None]:
    """Send fd 1 and 2 (ours and every child's) to ``log`` for the duration."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each benchmark (default 3)")
    parser.add_argument("--quick", action="store_true", help="small inputs and 1 repeat; results to .cache/bench/")
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma list of {', '.join(NAMES)}")
    parser.add_argument("--results", type=Path, default=None,
                        help="where to write the report (default benchmarks/RESULTS.md; --quick: .cache/bench/RESULTS-quick.md)")
    parser.add_argument("--seed-pages", type=int, default=16,
                        help="render: pages the seed renders per repeat (~1.5 s each); 0 = every page")
    parser.add_argument("--batch-size", type=int, default=16, help="pipeline: our engine batch size (8 or 16)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per process for torch/OpenMP (OMP_NUM_THREADS, torch.set_num_threads), "
                             "the same for both sides; default 1: on a shared 2-core machine two OpenMP threads "
                             "stall each other whenever another process runs; 0 = library defaults")
    parser.add_argument("--scaling-repeats", type=int, default=None,
                        help="scaling: repeats per corpus size (default: --repeats)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {NAMES}")
    if args.quick:
        args.repeats = 1
    return args


def runners(args: argparse.Namespace) -> dict[str, Callable[[], Result]]:
    from benchmarks import browse, estimate, ocr, pipeline, pipeline_vllm, rebuild, render, scaling, sweep

    return {
        "render": lambda: render.run(args.repeats, args.quick, args.seed_pages),
        "pipeline": lambda: pipeline.run(args.repeats, args.quick, args.batch_size),
        "pipeline_vllm": lambda: pipeline_vllm.run(args.repeats, args.quick),
        "sweep": lambda: sweep.run(args.repeats, args.quick),
        "rebuild": lambda: rebuild.run(args.repeats, args.quick),
        "scaling": lambda: scaling.run(args.scaling_repeats or args.repeats, args.quick),
        "estimate": lambda: estimate.run(),
        "ocr": lambda: ocr.run(args.repeats, args.quick),
        "browse": lambda: browse.run(args.repeats, args.quick),
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import load_previous, ratio_table_text, write_results

    args = parse(argv)
    if args.threads > 0:  # before torch is imported: children (swift export, render workers) inherit it
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chosen = [name for name in NAMES if name in args.only.split(",")]
    command = "python -m benchmarks" + ("".join(f" {shlex.quote(a)}" for a in sys.argv[1:]) if argv is None
                                        else "".join(f" {shlex.quote(a)}" for a in argv))
    results_path = args.results or (BENCH / "RESULTS-quick.md" if args.quick else RESULTS)
    previous = load_previous(results_path)  # the last run's ratios, to show how well this one reproduces them
    results: list[Result] = []
    failures: list[str] = []
    started = time.perf_counter()
    table = runners(args)
    for name in chosen:
        log = BENCH / "logs" / f"{name}.log"
        print(f"[bench] {name}: running (repeats {args.repeats}; log {log.relative_to(BENCH.parents[1])})", flush=True)
        before, tick = load1(), time.perf_counter()
        try:
            with captured(log):
                result = table[name]()
        except Exception as error:  # one broken benchmark must not hide the others
            with open(log, "a") as sink:
                sink.write(traceback.format_exc())
            failures.append(f"{name}: {type(error).__name__}: {error} (traceback in {log})")
            print(f"[bench] {name}: FAILED ({type(error).__name__}: {error}); see {log}", flush=True)
            continue
        result.seconds, result.load = time.perf_counter() - tick, (before, load1())
        results.append(result)
        print(f"[bench] {name}: done in {result.seconds:.0f} s (load {before:.1f} -> {result.load[1]:.1f})", flush=True)
        write_results(results_path, results, machine(), command, args.repeats, args.quick,
                      time.perf_counter() - started, failures, previous)  # after each: a killed run keeps it
    write_results(results_path, results, machine(), command, args.repeats, args.quick,
                  time.perf_counter() - started, failures, previous)
    print(f"\n[bench] wrote {results_path} ({(time.perf_counter() - started) / 60:.1f} min)\n")
    print(ratio_table_text(results))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
