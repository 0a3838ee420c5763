"""What every benchmark script shares: sides in subprocesses, contention records, reports.

A *side* is one implementation under test. Each runs in a fresh interpreter so that none can
leave threads, allocator state or global flags behind for another, and so that its peak memory
is its own. :func:`run_process` measures, for each such process:

- peak RSS: ``ru_maxrss`` from ``os.wait4`` on that process (the kernel's high-water mark of its
  resident memory, including model loading and tokenisation; children it waited for included);
- contention: CPU-seconds spent by *other* processes while it ran (all busy time in
  ``/proc/stat`` minus its own user + system time), and the 1-minute load average around it.

The lmforge side runs ``lmforge train`` through its CLI (:func:`lmforge_train`); Hugging Face
sides use ``hf_sides``. This module imports no ML library at import time: the parent process
stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "benchmarks" / "results"
IGNORE = -100

# The lmforge run metrics (manifest.json "metrics") every benchmark reads.
LMFORGE_METRICS = ("train_loss", "tokens", "target_tokens", "train_seconds", "tokens_per_s")
# A side whose run saw other processes use more than this share of the CPU is flagged.
CONTENDED_SHARE = 0.10


def run_main(main) -> None:
    """``sys.exit(main())``, printing a BenchError as one line with exit code 2."""
    try:
        code = main()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


class BenchError(RuntimeError):
    """A problem the user can act on; printed without a traceback."""


def shared_file(relative: str, what: str) -> Path:
    """A file under ``../shared/data``; a clear error when absent (nothing is downloaded)."""
    path = SHARED_DATA / relative
    if not path.is_file():
        raise BenchError(
            f"data file not found: {path}\nThis benchmark needs {what} beside the checkout "
            f"(../shared/data/{relative}); nothing is downloaded."
        )
    return path


def require(*modules: str) -> None:
    """Fail before any work when a side's library is missing, naming the pip extra."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: install the benchmark extra with "
            "pip install -c constraints.txt -e '.[bench]'"
        )


def child_env() -> dict[str, str]:
    """Environment for every side: offline, no tokenizer thread pool fighting torch's."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """CPU model, cores, torch threads and the versions of every library a side may use."""
    from importlib import metadata

    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **versions,
    }


def lmforge_revision() -> str | None:
    from lmforge.artifacts import git_revision

    return git_revision()


def measure_peak_gflops() -> float:
    """The careful fp32 matmul peak: 2048×2048, best of up to 5 within 5 s."""
    from lmforge.training.flops import matmul_peak_gflops

    return matmul_peak_gflops("cpu", n=2048, reps=5, seconds_budget=5.0)


# --------------------------------------------------------------------------- contention
def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def busy_share(seconds: float = 3.0) -> float | None:
    """Share of all cores busy over ``seconds`` (0 idle .. 1 saturated), or None off Linux."""
    before = _cpu_jiffies()
    time.sleep(seconds)
    after = _cpu_jiffies()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def wait_until_quiet(max_share: float, timeout: float) -> dict:
    """Poll until other processes use less than ``max_share`` of the CPU, or ``timeout`` passes."""
    t0 = time.monotonic()
    share = busy_share()
    while share is not None and share > max_share and time.monotonic() - t0 < timeout:
        print(
            f"waiting for a quiet machine: {share:.0%} of the CPU busy (want <= {max_share:.0%})",
            flush=True,
        )
        share = busy_share(10.0)
    return {"waited_s": round(time.monotonic() - t0, 1), "busy_share_before": share}


def run_process(cmd: Sequence[str], label: str, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` (output streams through) and return its exit code, peak RSS and contention.

    ``env``: variables added to :func:`child_env` for this process.
    """
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_jiffies()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=REPO, env={**child_env(), **(env or {})})
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    wall = time.perf_counter() - t0
    cpu_after = _cpu_jiffies()
    own_cpu = usage.ru_utime + usage.ru_stime
    out = {
        "returncode": proc.returncode,
        "process_seconds": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "cpu_seconds": round(own_cpu, 2),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
    }
    if cpu_before is not None and cpu_after is not None:
        busy = (cpu_after[0] - cpu_before[0]) / ticks
        others = max(0.0, busy - own_cpu)
        out["other_cpu_seconds"] = round(others, 2)
        out["other_cpu_share"] = round(others / max(wall * (os.cpu_count() or 1), 1e-9), 4)
    if proc.returncode != 0:
        raise BenchError(f"the {label} side failed (exit code {proc.returncode}); see above")
    return out


def run_side(script: Path, out: Path, args: Sequence[str], label: str) -> dict:
    """``python script --out OUT args...`` in a fresh interpreter: its JSON + process stats."""
    out.unlink(missing_ok=True)
    stats = run_process([sys.executable, str(script), "--out", str(out), *args], label)
    if not out.is_file():
        raise BenchError(f"the {label} side wrote no result ({out})")
    return {**json.loads(out.read_text()), **stats}


def contention_warning(label: str, side: dict) -> str | None:
    share = side.get("other_cpu_share")
    if share is not None and share > CONTENDED_SHARE:
        return (
            f"WARNING: other processes used {share:.0%} of the CPU during {label}: "
            "its figures are not clean; rerun on a quiet machine"
        )
    return None


def token_count_warning(label: str, side: dict, expected: dict) -> str | None:
    """A warning when a side trained on other ``tokens``/``target_tokens`` than ``expected``."""
    if side["tokens"] != expected["tokens"] or side["target_tokens"] != expected["target_tokens"]:
        return (
            f"WARNING: {label} trained on {side['tokens']:,} tokens / "
            f"{side['target_tokens']:,} targets, expected {expected['tokens']:,} / "
            f"{expected['target_tokens']:,}"
        )
    return None


def side_warnings(
    results: dict,
    check: Callable[[str, dict], str | None] | None = None,
    prefix: str = "",
) -> list[str]:
    """For each side in order: ``check(label, side)``'s warning, then its
    :func:`contention_warning`, each where there is one (``label``: ``prefix`` + the name)."""
    lines = []
    for name, side in results.items():
        label = prefix + name
        for warning in (check(label, side) if check else None, contention_warning(label, side)):
            if warning:
                lines.append(warning)
    return lines


# --------------------------------------------------------------------------- lmforge side
def lmforge_train(overrides: Sequence[str], run_dir: Path, label: str = "lmforge") -> dict:
    """``lmforge train`` through its CLI in a fresh process; metrics from the run directory.

    Reads ``manifest.json`` (status, ``metrics``) and the logged losses of ``metrics.jsonl``;
    nothing inside lmforge is imported, so the loop may change freely behind this interface.
    """
    stats = run_process(
        [sys.executable, "-m", "lmforge", "train", *overrides],
        label,
        # keep lmforge's tokenised-data cache beside the run instead of in $HOME
        env={"LMFORGE_CACHE": str(run_dir.parent / "lmforge-cache")},
    )
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise BenchError(f"lmforge wrote no manifest in {run_dir}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != "completed":
        raise BenchError(f"lmforge run status is {manifest.get('status')!r} ({manifest_path})")
    metrics = manifest.get("metrics", {})
    missing = [k for k in LMFORGE_METRICS if k not in metrics]
    if missing:
        raise BenchError(
            f"lmforge's manifest metrics lack {missing} (has: {sorted(metrics)}); the benchmark "
            "expects " + ", ".join(LMFORGE_METRICS)
        )
    logged = []
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "loss" in row:
                logged.append([int(row["step"]), float(row["loss"])])
    padding = metrics.get("padding_fraction")
    return {
        "tokens": int(metrics["tokens"]),
        "target_tokens": int(metrics["target_tokens"]),
        "train_seconds": float(metrics["train_seconds"]),
        "tokens_per_s": float(metrics["tokens_per_s"]),
        "final_loss": float(metrics["train_loss"]),
        "padding_fraction": None if padding is None else float(padding),
        "window_losses": logged,
        "metrics": metrics,
        "git_revision": manifest.get("git_revision"),
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        **stats,
    }


# --------------------------------------------------------------------------- settings
# The ``train.*`` settings every lmforge side pins, in the order of their overrides.
TRAIN_KEYS = (
    "batch_size",
    "grad_accum",
    "lr",
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
    "betas",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "shuffle",
    "log_every",
    "seed",
    "device",
)
# Not from the settings dict: the same for every benchmark.
FIXED_TRAIN = {"shuffle": "false", "device": "cpu"}


def train_overrides(settings: dict, steps: int, skip: Sequence[str] = ()) -> list[str]:
    """``train.max_steps=steps``, then ``train.KEY=settings[KEY]`` for every key of
    ``TRAIN_KEYS`` but ``skip`` (``shuffle`` off and ``device`` cpu whatever the settings)."""
    out = [f"train.max_steps={steps}"]
    for key in TRAIN_KEYS:
        if key in skip:
            continue
        if key in FIXED_TRAIN:
            value = FIXED_TRAIN[key]
        elif key == "betas":
            value = f"[{settings['betas'][0]},{settings['betas'][1]}]"
        else:
            value = settings[key]
        out.append(f"train.{key}={value}")
    return out


def lmforge_train_overrides(settings: dict, steps: int) -> list[str]:
    """The ``train.*`` overrides that pin lmforge's loop to ``settings`` (see the scripts), no
    progress bar or TensorBoard, and ``force=true``: for :func:`lmforge_train`."""
    return [
        *train_overrides(settings, steps),
        "track.progress=false",
        "track.tensorboard='off'",  # quoted: YAML reads a bare off as False
        "force=true",
    ]


# --------------------------------------------------------------------------- report
def subset(choices: dict):
    """An argparse type: a comma-separated subset of ``choices``, returned in their order."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(choices)}")
        return [n for n in choices if n in names]

    return parse


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        rest = (f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([f"{cells[0]:<{widths[0]}}", *rest])

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def window_diffs(side_losses: list, base_losses: list) -> dict:
    """Loss difference (%) against the baseline for every logging window both logged."""
    base_at = {int(step): loss for step, loss in base_losses}
    diffs = {
        int(step): 100 * (loss - base_at[int(step)]) / base_at[int(step)]
        for step, loss in side_losses
        if int(step) in base_at
    }
    return {
        "window_loss_diff_pct": diffs,
        "max_window_loss_diff_pct": max((abs(d) for d in diffs.values()), default=None),
    }


def write_results(results: dict, path: Path | None) -> None:
    """Write the results JSON to ``path``; None (a shortened run) writes nothing and says so."""
    if path is None:
        print("\nshortened run: results not written (pass --results PATH to keep them)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def results_path(name: str, given: Path | None, full_run: bool) -> Path | None:
    """``--results`` if given; else ``benchmarks/results/<name>.json`` for a full-length run
    only, so that a smoke run never overwrites the recorded figures."""
    if given is not None:
        return given
    return RESULTS_DIR / f"{name}.json" if full_run else None


def run_header(benchmark: str, args_line: Sequence[str]) -> dict:
    """Date, command, machine and lmforge revision: the start of every results file."""
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *args_line]),
        "machine": machine_info(),
        "lmforge_git_revision": lmforge_revision(),
    }


def add_run_args(parser, steps: int, results_name: str, sides: dict) -> None:
    """What every benchmark script takes: --steps, --sides, --work, --no-wait, --results."""
    parser.add_argument(
        "--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})"
    )
    parser.add_argument(
        "--sides",
        type=subset(sides),
        default=list(sides),
        help=f"comma-separated subset of: {', '.join(sides)} (default: all)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="working folder (default: a temporary folder)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="start each side at once instead of waiting up to 5 minutes for a quiet CPU",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"results JSON (default: benchmarks/results/{results_name}.json; a run with "
        "fewer --steps writes none unless given)",
    )


# --------------------------------------------------------------------------- side-by-side main
T = TypeVar("T")


def parse_side_args(parser, argv: Sequence[str] | None, child_sides: Mapping) -> argparse.Namespace:
    """Add the hidden child options (``--side`` one of ``child_sides``, ``--out``), parse
    ``argv`` and check ``--steps`` (after :func:`add_run_args`)."""
    parser.add_argument("--side", choices=sorted(child_sides), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error("--steps must be positive")
    return args


def run_sides_main(
    args: argparse.Namespace,
    child_sides: Mapping[str, Callable[..., dict]],
    parent: Callable[[Path], T],
    requires: Sequence[str] = (),
    child_options: Sequence[str] = (),
) -> T | None:
    """What a side-by-side script's ``main`` does once its arguments are parsed.

    In a child process (``--side`` given, see :func:`run_child_side`):
    ``child_sides[side](work=..., steps=..., **options)`` (``options``: the values of the
    ``child_options`` arguments, e.g. ``size``), its result written as JSON to ``--out``; returns
    None. In the parent: :func:`require` the ``requires``, then ``parent(work)`` in the working
    folder (``--work``, created if needed and kept; else a temporary one, removed afterwards);
    returns what ``parent`` returns.
    """
    if args.side:  # child process: one side only
        options = {name: getattr(args, name) for name in child_options}
        result = child_sides[args.side](work=args.work, steps=args.steps, **options)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return None
    require(*requires)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return parent(work)


def run_child_side(
    script: str, side: str, work: Path, steps: int, out: Path | None = None, **options
) -> dict:
    """:func:`run_side` of ``script --side SIDE [--OPTION VALUE ...] --work WORK --steps STEPS``
    (the child branch of :func:`run_sides_main`); its JSON in ``out`` (default
    ``work/SIDE.json``)."""
    args = ["--side", side]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    args += ["--work", str(work), "--steps", str(steps)]
    return run_side(Path(script).resolve(), out or work / f"{side}.json", args, side)


def run_each_side(sides: Sequence[str], run: Callable[[str], dict], no_wait: bool) -> dict:
    """``{side: run(side)}`` in order, each after waiting up to 5 minutes for a quiet CPU
    (:func:`wait_until_quiet`, its figures added to the side's) unless ``no_wait``."""
    results = {}
    for side in sides:
        quiet = {} if no_wait else wait_until_quiet(0.15, 300)
        results[side] = {**run(side), **quiet}
    return results
