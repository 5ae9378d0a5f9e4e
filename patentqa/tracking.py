"""Run manifest, secret scrubbing and one W&B run per job (train and eval; of patentqa, imports preemption only).

Parent and ``swift sft`` child share one W&B run, one writer at a time, in *segments* of the
same id: the parent opens one (config); ``Tracker.handoff()`` closes it and yields ``env()``
for the child, whose transformers ``WandbCallback`` resumes the id (``WANDB_RUN_ID`` +
``WANDB_RESUME=allow``); then the parent resumes for evaluation and finishes with the job's
exit code. Offline, each segment is a ``<run_dir>/wandb/offline-run-<time>-<id>[-N]`` dir and
``wandb sync <run_dir>/wandb/offline-run-*`` uploads them, in start order, into one run.
``log(metrics, step=N)`` puts N in ``train/global_step`` (the HF x-axis), not in ``_step``.
A job interrupted to be requeued (``preemption.JobInterrupted``) leaves its run open, neither finished nor
failed: the requeued job resumes the same id.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import socket
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from patentqa.preemption import JobInterrupted

PACKAGES = ("patentqa", "ms-swift", "transformers", "peft", "torch", "torchvision", "deepspeed",
            "wandb", "hydra-core", "omegaconf", "pymupdf", "qwen-vl-utils", "vllm")
# Environment that changes results or placement (never secrets): recorded in the manifest.
ENV_ALLOW = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "VIDEO_MAX_PIXELS",
             "IMAGE_FACTOR", "FPS", "FPS_MAX_FRAMES",
             "CUDA_VISIBLE_DEVICES", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "WORLD_SIZE", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG",
             "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
             "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "USE_HF", "MODELSCOPE_CACHE", "HF_HOME",
             "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR")
ENV_ALLOW_PREFIXES = ("PATENTQA_",)
# The lock files `make lock` writes beside the package (requirements/): make setup installs lock-cpu.txt, a GPU node
# lock-gpu.txt (README). The manifest names the one the installed packages match, with its sha256.
LOCKS = ("lock-cpu.txt", "lock-gpu.txt")
LOCK_DIR = Path(__file__).resolve().parents[1] / "requirements"
STEP_KEY = "train/global_step"  # the step metric transformers' WandbCallback defines
MASK = "***"
_SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}
_COUNT_WORDS = {"num", "count", "len"}  # IMAGE_MAX_TOKEN_NUM: a number of tokens, not a token
_MIN_SECRET_LEN = 8  # shorter env values are not hunted inside strings (too many false hits)


def is_secret_name(name: str) -> bool:
    """``WANDB_API_KEY``, ``hf_token``, ``apiKey``, ``db.password``: whole words, not ``max_new_tokens`` or
    ``IMAGE_MAX_TOKEN_NUM`` (a count of tokens)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    counted = {i for i, (word, after) in enumerate(zip(words, words[1:])) if word == "token" and after in _COUNT_WORDS}
    secret = any(word in _SECRET_WORDS and i not in counted for i, word in enumerate(words))
    return secret or any(p in _SECRET_PAIRS for p in zip(words, words[1:]))


def secret_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of environment variables that hold secrets (judged by name)."""
    return sorted(k for k in (os.environ if environ is None else environ) if is_secret_name(k))


def _secret_values() -> list[str]:
    values = {os.environ[k] for k in secret_env_names() if len(os.environ[k]) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _scrub_str(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MASK)
    # key=value (Hydra overrides, --flag=value, URL queries) with a secret-looking key
    return re.sub(r"([A-Za-z_][\w.-]*)=(\S+)", lambda m: f"{m[1]}={MASK}" if is_secret_name(m[1]) else m[0], text)


def scrub(obj: Any, *, _values: list[str] | None = None) -> Any:
    """JSON-shaped copy of ``obj`` with secrets replaced by ``"***"``: string values under
    secret-looking keys, the item after a secret ``--flag``, ``secret_key=value`` in strings,
    and every occurrence of a secret environment variable's value (``WANDB_API_KEY``...)."""
    values = _secret_values() if _values is None else _values
    if isinstance(obj, str):
        return _scrub_str(obj, values)
    if isinstance(obj, Mapping):
        return {str(k): MASK if isinstance(v, str) and v and is_secret_name(str(k)) else scrub(v, _values=values)
                for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (bytes, bytearray)):
        out = [scrub(v, _values=values) for v in obj]
        for i, v in enumerate(list(obj)[:-1]):
            if isinstance(v, str) and v.startswith("-") and "=" not in v and is_secret_name(v):
                out[i + 1] = MASK
        return out
    return obj


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 less the process's umask (a shared
    cluster's umask 002 keeps group write; mkstemp alone would leave 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The records of a JSONL file, split at ``\n`` only: ``str.splitlines()`` also splits at U+2028, U+0085 and
    other separators that ``json.dumps(..., ensure_ascii=False)`` leaves inside strings, and a model's reply may
    hold them. Blank lines are skipped."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def atomic_write(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` via a temp file in the same folder + ``os.replace``: readers never see half a file.

    The one way patentqa writes files that others read (manifests, rows, caches, pages). ``durable=False`` skips
    the fsync (~4 ms a file): for files derived from others and made again when missing (thumbnails), which a
    power loss may leave empty, never half-written; their readers take an empty file for a missing one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``scrub(obj)`` as JSON atomically."""
    text = json.dumps(scrub(obj), indent=2, ensure_ascii=False, default=str, sort_keys=True)
    return atomic_write(path, (text + "\n").encode("utf-8"))


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"sha", "dirty"}`` of the git checkout holding ``path`` (default: this package), else None."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:  # --no-optional-locks: never touch the index of a repo we only read
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None where not installed)."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {name: version(name) for name in names}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:  # noqa: BLE001 - not PEP 440 (or no packaging): compare as text
        return a == b


def _installed_versions() -> dict[str, list[str]]:
    """Canonical name -> versions of the ``*.dist-info`` folders on sys.path (their names say both: reading every
    METADATA file would take ~1 s). Two versions of one name: a broken install, shown as such."""
    found: dict[str, set[str]] = {}
    for entry in sys.path:
        try:
            names = [e.name for e in os.scandir(entry or ".") if e.name.endswith(".dist-info")]
        except OSError:
            continue
        for folder in names:
            name, _, version = folder[:-len(".dist-info")].partition("-")
            if version:
                found.setdefault(_canonical(name), set()).add(version)
    return {name: sorted(versions) for name, versions in found.items()}


def lock_state(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The lock file (``LOCKS`` in ``folder``, default the checkout's requirements/) that the installed packages
    match best: its name, sha256, how many pins it has and which installed versions differ from it (first 10).
    Without a lock file (an install outside a checkout) it says so instead of failing."""
    folder = Path(folder) if folder is not None else LOCK_DIR
    installed = _installed_versions()
    found = []
    for lock in LOCKS:
        path = folder / lock
        if not path.is_file():
            continue
        data = path.read_bytes()
        pins = {}
        for line in data.decode("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = re.split(r"===?", line, maxsplit=1)
                pins[_canonical(name)] = version.strip()
        differ = [f"{name} {', '.join(sorted(installed.get(name, ['missing'])))} (lock {version})"
                  for name, version in sorted(pins.items())
                  if [v for v in installed.get(name, ["missing"]) if not _same_version(v, version)]]
        found.append({"file": f"{folder.name}/{lock}", "sha256": hashlib.sha256(data).hexdigest(),
                      "packages": len(pins), "differ": len(differ), "differing": differ[:10]})
    if not found:
        return {"file": None, "note": f"no lock file ({', '.join(LOCKS)}) in {folder}: installed outside a checkout?"}
    return min(found, key=lambda entry: entry["differ"])


def result_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment variables that are set."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in sorted(env)
            if (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)) and not is_secret_name(k)}


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint that swift saved in a run (``swift/vN-*/checkpoint-STEP``)."""

    path: Path
    step: int

    @property
    def full(self) -> bool:
        """A whole model (full fine-tuning: config + weights), not a LoRA adapter."""
        return checkpoint_kind(self.path) == "full"


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """``lora`` (an adapter: adapter_config.json), ``full`` (a whole model: config.json) or None (neither)."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return "lora"
    return "full" if (path / "config.json").is_file() else None


def checkpoints(swift_dir: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints under swift's output dir, by step: those with a whole trainer_state.json, the file
    transformers' Trainer writes after the weights, optimizer and RNG states (a kill while saving leaves none, or
    half of one)."""
    found = []
    for path in Path(swift_dir).glob("v*/checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and _whole_json(path / "trainer_state.json"):
            found.append(Checkpoint(path, int(match.group(1))))
    return sorted(found, key=lambda c: (c.step, str(c.path)))


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def swift_log(swift_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """swift's logging.jsonl records under its output dir (every ``vN-*``, in order); a torn line is skipped."""
    records = []
    for path in sorted(Path(swift_dir).glob("v*/logging.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a blank line, or one a killed run left half written
                continue
    return [record for record in records if isinstance(record, dict)]


def run_manifest(config: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What reproduces a run: git, versions, the lock they came from, host, argv, result env, config (all scrubbed)."""
    return scrub({"state": "running", "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "git": git_state(), "versions": package_versions(), "lock": lock_state(),
                  "python": platform.python_version(), "platform": platform.platform(),
                  "hostname": socket.gethostname(), "argv": list(sys.argv), "env": result_env(),
                  "config": config, **(extra or {})})


def update_manifest(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Set fields (``state=succeeded|failed``, ``exit_code``, ``error``...); a final state stamps ``ended_at``."""
    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    if fields.get("state") in ("succeeded", "failed"):
        fields.setdefault("ended_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest.update(fields)
    write_json_atomic(path, manifest)
    return manifest


class Tracker:
    """One W&B run per job; all no-ops for ``logger.name: none`` (or None) and on NODE_RANK > 0.

    ``with Tracker(cfg.logger, run_dir=..., name=..., group=..., config=...) as t:`` starts the
    run and finishes it in ``finally`` (exit code 1 on an exception, which propagates). Start
    children inside ``with t.handoff() as env:`` with ``env={**os.environ, **env}``.
    """

    def __init__(self, logger_cfg: Mapping[str, Any] | None, *, run_dir: str | os.PathLike, name: str,
                 group: str | None = None, tags: Sequence[str] = (), config: Mapping[str, Any] | None = None,
                 job_type: str = "train", run_id: str | None = None) -> None:
        cfg = dict(logger_cfg or {})
        self.enabled = cfg.get("name") == "wandb" and os.environ.get("NODE_RANK", "0") in ("", "0")
        self.run_dir, self.name, self.group, self.job_type = Path(run_dir), name, group, job_type
        self.tags = [str(t).replace(",", "_") for t in tags]  # WANDB_TAGS is comma separated
        self.project, self.entity = cfg.get("project") or "patentqa", cfg.get("entity") or None
        self.mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        alphabet = string.ascii_lowercase + string.digits  # like wandb.util.generate_id
        self.run_id = run_id or "".join(secrets.choice(alphabet) for _ in range(8))
        self.config = dict(config or {})
        self._run: Any = None
        self._opened = self._handed_off = self._finished = False

    def info(self) -> dict[str, Any] | None:
        """Where the run lives (for the manifest); None when not tracking."""
        return {"id": self.run_id, "project": self.project, "entity": self.entity, "group": self.group,
                "name": self.name, "mode": self.mode, "dir": str(self.run_dir / "wandb")} if self.enabled else None

    def env(self) -> dict[str, str]:
        """Environment for a child (``swift sft``) whose HF ``WandbCallback`` must log into this run."""
        if not self.enabled:
            return {}
        env = {"WANDB_MODE": self.mode, "WANDB_DIR": str(self.run_dir), "WANDB_PROJECT": self.project,
               "WANDB_RUN_ID": self.run_id, "WANDB_RESUME": "allow", "WANDB_NAME": self.name,
               "WANDB_JOB_TYPE": self.job_type, "WANDB_X_DISABLE_META": "true",
               "WANDB_LOG_MODEL": "false", "WANDB_WATCH": "false",
               # wandb.init put our wandb-core's address in os.environ; a child attached to it
               # leaves its stream of this id open there and our resume fails ("run ID in use")
               "WANDB_SERVICE": ""}
        optional = {"WANDB_TAGS": ",".join(self.tags), "WANDB_RUN_GROUP": self.group, "WANDB_ENTITY": self.entity}
        return {**env, **{k: v for k, v in optional.items() if v}}

    def swift_args(self) -> list[str]:
        """``swift sft`` flags for this run (swift's default run name is its output dir)."""
        return ["--report_to", "wandb", "--run_name", self.name] if self.enabled else []

    def start(self) -> Tracker:
        """Open (or re-open) this process's segment of the run."""
        if not self.enabled or self._run is not None or self._finished:
            return self
        if self._handed_off:
            raise RuntimeError("a child process owns the W&B run until the handoff ends")
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project, entity=self.entity, group=self.group, name=self.name,
            tags=self.tags or None, job_type=self.job_type, dir=str(self.run_dir), mode=self.mode,
            id=self.run_id, resume="allow", config=None if self._opened else scrub(self.config),
            # no metadata record (it holds sys.argv, git remote...): the manifest has what matters;
            # create_new: never hand back or finish another run of this process
            settings=wandb.Settings(x_disable_meta=True, reinit="create_new"))
        self._opened = True
        self._run.define_metric(STEP_KEY)
        self._run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        return self

    def pause(self) -> None:
        """Close this process's segment (exit code 0); the run goes on in the next segment."""
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=0)

    @contextmanager
    def handoff(self) -> Iterator[dict[str, str]]:
        """Pause, yield :meth:`env` for a child process, resume afterwards (also on errors, but not when the job
        is interrupted to be requeued: the requeued job resumes the run)."""
        self.pause()
        self._handed_off = True
        interrupted = False
        try:
            yield self.env()
        except JobInterrupted:
            interrupted = True
            raise
        finally:
            self._handed_off = False
            if not interrupted:
                self.start()

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics; ``step`` is the training global step (``train/global_step``), not ``_step``."""
        if self.enabled and not self._finished:
            self.start()._run.log({**scrub(metrics), **({STEP_KEY: step} if step is not None else {})})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], images: Sequence[str] = ()) -> None:
        """One W&B Table under its own key (e.g. the predictions of one checkpoint), rows scrubbed; the cells of
        the ``images`` columns are image files (or None), logged as ``wandb.Image``. wandb (0.31) keeps a table's
        images in the run's table artifact, copied at log time into ``$WANDB_DATA_DIR/artifacts/staging``:
        staged here inside the run's own offline dir, so the run holds its media and ``wandb sync`` of that dir
        (on another machine too) uploads them."""
        if self.enabled and not self._finished:
            import wandb

            run = self.start()._run
            at = {columns.index(name) for name in images}
            data = [[wandb.Image(str(cell)) if i in at and cell else cell for i, cell in enumerate(row)]
                    for row in scrub(rows)]
            saved = os.environ.get("WANDB_DATA_DIR")
            os.environ["WANDB_DATA_DIR"] = str(Path(run.dir).parent)  # <run_dir>/wandb/<offline-run-...>/
            try:
                run.log({key: wandb.Table(columns=columns, data=data)})
            finally:
                if saved is None:
                    os.environ.pop("WANDB_DATA_DIR", None)
                else:
                    os.environ["WANDB_DATA_DIR"] = saved

    def log_artifact(self, path: str | os.PathLike, *, name: str, type: str) -> None:
        """A file as a W&B artifact (e.g. a predictions.jsonl)."""
        if self.enabled and not self._finished:
            import wandb

            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", name), type=type)
            artifact.add_file(str(path))
            self.start()._run.log_artifact(artifact)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (final metrics, best checkpoint...)."""
        if self.enabled and not self._finished:
            self.start()._run.summary.update(scrub(values))

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run; a non-zero ``exit_code`` marks it failed. Idempotent."""
        if not self.enabled or self._finished:
            return
        if exit_code != 0:
            self.start()  # if paused, a last segment records the failure
        self._finished = True
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, JobInterrupted):
            self.pause()  # neither finished nor failed: the requeued (or resumed) job continues this run
            return
        self.finish(1 if exc_type is not None else 0)
