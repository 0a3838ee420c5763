"""Run directories, manifests, atomic writes, content fingerprints and lineage.

Every recipe writes one run directory with ``manifest.json``: the stage, the resolved config, the
inputs (path, fingerprint, the manifest they came from), the outputs with fingerprints, counts,
metrics, library versions, the git revision, times and status. ``lineage`` walks these back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- atomic writes
def fsync_path(path: Path) -> None:
    """fsync a file or folder (best effort): a rename is durable once its folder is synced."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary name in the same folder, fsync, rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupt) leaves no temp file
        raise
    fsync_path(path.parent)
    return path


def remove_partial_writes(folder: str | Path) -> int:
    """Delete temporary files a killed ``atomic_write_bytes`` left below ``folder``.

    Only for folders one process owns (a run directory being resumed). Returns how many.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(".*.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    )


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    A process killed inside the block leaves the previous ``path`` (or nothing) in place,
    plus a ``.tmp-`` folder that the next call ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- fingerprints
def fingerprint_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of a folder (relative names + file hashes, manifest excluded)."""
    path = Path(path)
    if path.is_file():
        return fingerprint_file(path)
    if not path.is_dir():
        raise UserError(f"not found: {path}")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel == MANIFEST or "/." in "/" + rel:
            continue
        h.update(rel.encode() + b"\0" + fingerprint_file(f).encode() + b"\0")
    return "sha256:" + h.hexdigest()


def fingerprint_obj(obj: Any) -> str:
    return (
        "sha256:"
        + hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    )


# --------------------------------------------------------------------------- environment
def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("lmforge", "torch", "transformers", "tokenizers", "peft", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def git_revision() -> str | None:
    """The lmforge source tree's commit (with '-dirty' when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- manifests
def find_manifest(path: str | Path) -> Path | None:
    """The manifest of the run that produced ``path`` (the path itself or a parent folder)."""
    path = Path(path).resolve()
    for folder in [path, *path.parents] if path.is_dir() else list(path.parents):
        candidate = folder / MANIFEST
        if candidate.is_file():
            return candidate
    return None


def read_manifest(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class Run:
    """A recipe's run directory and its manifest, rewritten atomically as the run goes."""

    stage: str
    dir: Path
    config: dict
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started: float = field(default_factory=time.time)
    ended: float | None = None

    @classmethod
    def start(
        cls,
        stage: str,
        config: dict,
        output_dir: str | Path,
        inputs: dict[str, str | Path | list] | None = None,
    ) -> Run:
        run = cls(stage=stage, dir=Path(output_dir), config=config)
        run.dir.mkdir(parents=True, exist_ok=True)
        for role, value in (inputs or {}).items():
            for p in value if isinstance(value, list) else [value]:
                if p:
                    run.add_input(p, role)
        return run  # the manifest is written when the work starts (see ``recorded``)

    @property
    def cache_key(self) -> str:
        """What determines this run's result: stage, config and input contents."""
        return fingerprint_obj(
            {
                "stage": self.stage,
                "config": self.config,
                "inputs": [(i["role"], i["fingerprint"]) for i in self.inputs],
            }
        )

    def add_input(self, path: str | Path, role: str) -> None:
        p = Path(path)
        if not p.exists():
            raise UserError(f"{role} not found: {p}")
        manifest = find_manifest(p)
        own = manifest is not None and manifest.parent.resolve() == self.dir.resolve()
        entry = {
            "role": role,
            "path": str(p.resolve()),
            "fingerprint": fingerprint(p),
            "manifest": None if (manifest is None or own) else str(manifest),
        }
        if entry not in self.inputs:
            self.inputs.append(entry)

    def add_output(self, path: str | Path, role: str) -> None:
        p = Path(path)
        self.outputs = [o for o in self.outputs if o["role"] != role]
        self.outputs.append({"role": role, "path": str(p.resolve()), "fingerprint": fingerprint(p)})

    def finished_before(self) -> dict | None:
        """A completed manifest in this folder with the same cache key whose outputs still match."""
        path = self.dir / MANIFEST
        if not path.is_file():
            return None
        old = read_manifest(path)
        if old.get("status") != "completed" or old.get("cache_key") != self.cache_key:
            return None
        for out in old.get("outputs", []):
            if not Path(out["path"]).exists() or fingerprint(out["path"]) != out["fingerprint"]:
                return None
        return old

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "status": self.status,
            "run_dir": str(self.dir.resolve()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "ended": None
            if self.ended is None
            else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.ended)),
            "seconds": None if self.ended is None else round(self.ended - self.started, 2),
            "cache_key": self.cache_key,
            "config": self.config,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "counts": self.counts,
            "metrics": self.metrics,
            "versions": library_versions(),
            "git_revision": git_revision(),
        }

    def save(self) -> None:
        atomic_write_json(self.dir / MANIFEST, self.to_dict())

    def finish(self, status: str = "completed") -> None:
        self.status = status
        self.ended = time.time()
        self.save()


@contextlib.contextmanager
def recorded(run: Run) -> Iterator[Run]:
    """Write the manifest as running; mark it completed on success, failed on an exception."""
    run.save()
    try:
        yield run
    except BaseException as exc:
        run.metrics["error"] = f"{type(exc).__name__}: {exc}"
        run.finish("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted")
        raise
    else:
        run.finish("completed")


# --------------------------------------------------------------------------- lineage
def lineage(path: str | Path) -> list[dict]:
    """Walk manifests from ``path`` back to raw files.

    Returns a list of nodes ``{"depth", "kind": "run"|"file", ...}`` in depth-first order; a run
    reached twice is listed once (later references say ``seen``).
    """
    start = find_manifest(path)
    if start is None:
        raise UserError(f"no lmforge manifest found for {path} (or any folder above it)")
    nodes: list[dict] = []
    seen: set[str] = set()

    def visit(manifest_path: Path, depth: int, role: str | None, path: str | None) -> None:
        key = str(manifest_path.resolve())
        m = read_manifest(manifest_path)
        node = {
            "depth": depth,
            "kind": "run",
            "role": role,
            "path": path,
            "stage": m.get("stage"),
            "run_dir": str(manifest_path.parent),
            "status": m.get("status"),
            "seen": key in seen,
            "outputs": m.get("outputs", []),
            "counts": m.get("counts", {}),
            "ended": m.get("ended"),
        }
        nodes.append(node)
        if key in seen:
            return
        seen.add(key)
        for inp in m.get("inputs", []):
            if inp.get("manifest") and Path(inp["manifest"]).is_file():
                visit(Path(inp["manifest"]), depth + 1, inp["role"], inp["path"])
            else:
                nodes.append(
                    {
                        "depth": depth + 1,
                        "kind": "file",
                        "role": inp["role"],
                        "path": inp["path"],
                        "fingerprint": inp["fingerprint"],
                    }
                )

    visit(start, 0, None, None)
    return nodes


def format_lineage(nodes: list[dict]) -> str:
    lines = []
    for n in nodes:
        pad = "  " * n["depth"]
        role = f"{n['role']}: " if n.get("role") else ""
        if n["kind"] == "run":
            extra = " (see above)" if n["seen"] else ""
            made = f"{n['path']} <- " if n.get("path") and n["path"] != n["run_dir"] else ""
            lines.append(f"{pad}{role}{made}[{n['stage']}] {n['run_dir']} ({n['status']}){extra}")
            if not n["seen"]:
                for out in n["outputs"]:
                    lines.append(f"{pad}    -> {out['role']}: {out['path']}")
                rej = n["counts"].get("rejects_file")
                if rej:
                    lines.append(f"{pad}    rejects: {rej}")
        else:
            lines.append(f"{pad}{role}{n['path']} [{n['fingerprint'][:19]}]")
    return "\n".join(lines)
