"""Write a lock file from the resolver's own output (``make lock``; never edit a lock by hand).

    python requirements/lock.py freeze VENV_PYTHON OUT     # pip freeze --all of a venv make setup's steps built
    python requirements/lock.py report REPORT.json... OUT  # pip install --dry-run --report of each gpu-install step
    python requirements/lock.py check VENV_PYTHON LOCK     # make setup's last step: the venv is exactly the lock
    python requirements/lock.py python LOCK                # make gpu-install's first step: this Python is the lock's

One ``name==version`` line per package, sorted, under a header that says how it was made. The
package itself (editable) is left out. torch and torchvision are written with ``===``: the
registry also offers ``2.13.0+cpu``, which ``==2.13.0`` would let in (README, "Why this torch").
A lock made from reports also names the Python and platform pip resolved for (the reports' ``environment``):
``python`` refuses any other in one line, since the pins hold there only (on 3.12 vLLM's ``setuptools<81``
conflicts with the pinned setuptools).
Standard library only: it runs under any python.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

STRICT = {"torch", "torchvision"}  # a local-version twin (+cpu) exists on the registry
SELF = "patentqa"
RESOLVED_FOR = re.compile(r"# Resolved for Python (?P<python>[\d.]+) on (?P<platform>[^;]+);")  # read by ``python``


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def line(name: str, version: str) -> str:
    op = "===" if canonical(name) in STRICT else "=="
    return f"{name}{op}{version}"


def from_freeze(python: str) -> list[str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    pins = []
    for raw in out.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        if "==" not in raw:
            raise SystemExit(f"lock: not a pinned release in pip freeze: {raw!r} (a direct URL or local path?)")
        name, version = raw.split("==", 1)
        if canonical(name) != SELF:
            pins.append(line(name, version))
    return pins


def from_report(path: str) -> list[str]:
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    pins = []
    for item in report["install"]:
        meta = item["metadata"]
        if canonical(meta["name"]) == SELF:
            continue
        if item.get("is_direct") and "archive_info" not in item.get("download_info", {}):
            raise SystemExit(f"lock: {meta['name']} comes from a local path or VCS, not the registry")
        pins.append(line(meta["name"], meta["version"]))
    return pins


def requested(path: str) -> str:
    """What a report's install was asked for, with the extras pip turned on (``patentqa[gpu,optuna,slurm,vllm]``); a
    package alone in its report, with requirements it did not resolve, was asked for with --no-deps."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))["install"]
    asked = []
    for item in items:
        if item.get("requested"):
            meta, extras = item["metadata"], item.get("requested_extras")
            alone = len(items) == 1 and meta.get("requires_dist")
            asked.append(meta["name"] + (f"[{','.join(extras)}]" if extras else "")
                         + (f" {meta['version']} without its requirements (--no-deps)" if alone else ""))
    return ", ".join(asked)


def resolved_for(paths: list[str]) -> str:
    """The header line naming the Python and platform the reports were resolved for (they must agree)."""
    found = set()
    for path in paths:
        env = json.loads(Path(path).read_text(encoding="utf-8"))["environment"]
        found.add(f"Python {env['python_version']} on {env['sys_platform']} {env['platform_machine']}")
    if len(found) != 1:
        raise SystemExit(f"lock: the reports were resolved for different environments: {sorted(found)}")
    return f"# Resolved for {found.pop()}; make gpu-install refuses another (lock.py python)."


def python_check(lock: str) -> int:
    """Exit 2 with one line unless this Python (version and platform) is the one the lock was resolved for."""
    header = RESOLVED_FOR.search(Path(lock).read_text(encoding="utf-8"))
    if header is None:
        print(f"lock: {lock} names no Python it was resolved for (rerun make lock)", file=sys.stderr)
        return 2
    want = (header["python"], header["platform"].strip())
    have = (f"{sys.version_info.major}.{sys.version_info.minor}", f"{sys.platform} {platform.machine()}")
    if have != want:
        print(f"patentqa's GPU lock ({lock}) is for Python {want[0]} on {want[1]} (found Python {have[0]} on "
              f"{have[1]}): use that Python, e.g. make gpu-install PYTHON=python{want[0]}", file=sys.stderr)
        return 2
    return 0


def read_lock(path: str) -> dict[str, str]:
    """canonical name -> version of a lock file."""
    pins = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        raw = raw.split("#", 1)[0].strip()
        if raw:
            name, version = re.split(r"===?", raw, maxsplit=1)
            pins[canonical(name)] = version.strip()
    return pins


def check(python: str, lock: str) -> int:
    """Exit 1 (and say what differs) unless the venv holds exactly the lock's packages at its versions."""
    want = read_lock(lock)
    have = {canonical(re.split(r"===?", p, maxsplit=1)[0]): re.split(r"===?", p, maxsplit=1)[1]
            for p in from_freeze(python)}
    wrong = [f"{n} {have[n]} (lock: {want[n]})" for n in sorted(want.keys() & have.keys()) if want[n] != have[n]]
    missing = sorted(want.keys() - have.keys())
    extra = sorted(have.keys() - want.keys())
    for label, names in (("other version than the lock", wrong), ("in the lock, not installed", missing),
                         ("installed, not in the lock", extra)):
        if names:
            print(f"lock check: {label}: {', '.join(names)}", file=sys.stderr)
    if wrong or missing or extra:
        print(f"lock check: the venv of {python} is not {lock}; `make lock` to move the lock on purpose",
              file=sys.stderr)
        return 1
    print(f"lock check: {len(have)} packages, exactly {lock}")
    return 0


def main(argv: list[str]) -> int:
    counts = {"freeze": (4,), "report": tuple(range(4, 10)), "check": (4,), "python": (3,)}
    if len(argv) < 2 or len(argv) not in counts.get(argv[1], ()):
        print(__doc__, file=sys.stderr)
        return 2
    mode, *sources, out = argv[1:]
    if mode == "python":
        return python_check(out)
    if mode == "check":
        return check(sources[0], out)
    if mode == "freeze":
        pins = from_freeze(sources[0])
        how = ["pip freeze --all of a fresh venv built by make setup's install steps (make lock)."]
    else:
        pins = [pin for source in sources for pin in from_report(source)]
        how = ["pip install --dry-run --report in a fresh venv (make lock-gpu) of make gpu-install's steps:",
               f"# {'; then '.join(requested(source) for source in sources)}.", resolved_for(sources)]
    pins = sorted(set(pins), key=lambda p: canonical(re.split(r"=+", p)[0]))
    names = [canonical(re.split(r"=+", p)[0]) for p in pins]
    if len(set(names)) != len(names):
        raise SystemExit(f"lock: two versions of {sorted({n for n in names if names.count(n) > 1})}")
    header = [f"# Generated by `make lock`: {how[0]}", *how[1:],
              f"# {len(pins)} packages. Do not edit by hand; rerun `make lock` to move versions."]
    tmp = Path(out + ".tmp")
    tmp.write_text("\n".join(header + pins) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"lock: {len(pins)} packages -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
