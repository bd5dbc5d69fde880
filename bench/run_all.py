"""Every benchmark in one command: one table of figures and targets, also written as JSON.

Runs each benchmark script of bench/ that exists (a missing one is listed as skipped) and collects every
line it prints with a "(target …)" in it:

    train_efficiency.py   trainer vs a bare PyTorch loop, images/s ratio           (target >= 0.97)
    targets.py            vectorised targets vs a per-object loop; share of a step (>= 20x; < 5 %)
    tui_overhead.py       training throughput with the TUI attached; key-to-paint   (>= 0.97; p95 <= 100 ms)
    sweep.py              a 7-trial sweep vs 7 trials alone: cost per trial process   (<= 6 s)
    diagnosis.py          diagnosis precision / recall                              (its own targets)
    crash_harness.py      SIGKILL at random moments, resume, compare                (N/N exact)
    startup.py            `nanxi-tune --help` time, TUI first frame, TUI RSS growth over 1 M logged steps
                                                                                    (<= 0.5 s; <= 1.5 s; <= 50 MB)
    gpu_check.py          only where CUDA is available (images/s, step time, peak memory, GPU busy: figures
                          without targets)
    bccd.py               only with --bccd (15 minutes of training)

By default each benchmark runs in a quick mode (fewer steps / repeats / kills; the whole table takes about
15-20 minutes on a 2-core CPU); --full runs the sizes each script documents (crash harness: 50 kills).

    .venv/bin/python bench/run_all.py [--full] [--bccd] [--only NAME ...] [--json bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# script: (quick args, full args, per-run timeout in seconds)
PLAN: dict[str, tuple[list[str], list[str], int]] = {
    "train_efficiency.py": (["--steps", "20", "--repeats", "1"], [], 1800),
    "targets.py": (["--repeats", "2"], [], 1800),
    "tui_overhead.py": (["--steps", "20", "--repeats", "1"], [], 1800),
    "sweep.py": (["--steps", "10"], [], 1800),
    "diagnosis.py": ([], ["--full"], 1800),
    "crash_harness.py": (["--kills", "10"], ["--kills", "50"], 3600),
    "startup.py": (["--repeats", "3"], ["--repeats", "5"], 1200),
    "gpu_check.py": (["--steps", "10"], [], 1200),
    "bccd.py": ([], [], 3600),
}
NAMES = {  # friendlier names for lines that do not start with one
    "throughput headless": "TUI attached / headless throughput",
    "key-to-paint latency": "TUI key-to-paint latency p95 (ms)",
    "overhead per trial": "sweep cost per trial process (s)",
}
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TARGET = re.compile(rf"\(target\s*(?P<label>[A-Za-z][\w-]*\s+)?(?P<op><=|>=|≤|≥|<|>|=)?\s*(?P<target>{NUM}(?:/{NUM})?)"
                    rf"\s*(?P<unit>[^)]*)\)")
VERDICT = re.compile(r"^\s*targets \((.+)\):\s*(MET|NOT MET)\s*$")
VALUE = re.compile(rf"(?P<value>{NUM}(?:/{NUM})?)\s*(?P<unit>x|%|ms|s|MB|GiB)?\s*[,;]?\s*$")


def parse(script: str, text: str) -> list[dict]:
    """Every "(target …)" line → {figure, value, unit, target, pass}."""
    rows = []
    for line in text.splitlines():
        verdict = VERDICT.search(line)
        if verdict:  # "targets (precision ≥ 0.95, recall ≥ 0.9, …): MET" (diagnosis.py)
            rows.append({"bench": script, "figure": f"{Path(script).stem} targets", "value": verdict.group(2),
                         "unit": "", "target": verdict.group(1), "pass": verdict.group(2) == "MET"})
            continue
        m = TARGET.search(line)
        if not m:
            continue
        head = line[:m.start()].rstrip()
        label = (m.group("label") or "").strip()
        if label:  # "(target p95 <= 100 ms)": the value is the one labelled p95
            lv = re.search(rf"\b{re.escape(label)}\s+(?P<value>{NUM})\s*(?P<unit>\w+)?", head)
            v = lv if lv else VALUE.search(head)
        else:
            v = VALUE.search(head) or re.search(r"(?P<value>\d+/\d+)(?P<unit>)", head)  # "10/10 kills resumed …"
        if not v:
            continue
        name = head[:v.start()].strip().rstrip(" :=,")
        for prefix, nice in NAMES.items():
            if name.startswith(prefix):
                name = nice
        if ":" in name:
            name = name.split(":")[0]
        op = {"≤": "<=", "≥": ">="}.get(m.group("op") or "", m.group("op") or ">=")
        value_s, target_s = v.group("value"), m.group("target")
        if "/" in target_s and not m.group("op"):
            op = "="
        if "/" in value_s or "/" in target_s:  # n/N: passes only when every one held
            num, den = (int(float(x)) for x in value_s.split("/"))
            ok = num == den and (den == int(float(target_s.split("/")[-1])) if "/" in target_s else True)
            value, target = value_s, target_s
        else:
            value, target = float(value_s), float(target_s)
            ok = {"<=": value <= target, ">=": value >= target, "<": value < target, ">": value > target,
                  "=": value == target}[op]
        unit = (v.group("unit") or m.group("unit") or "").strip()
        rows.append({"bench": script, "figure": name.strip(), "value": value, "unit": unit,
                     "target": f"{op} {target_s}{(' ' + m.group('unit').strip()) if m.group('unit').strip() else ''}",
                     "pass": bool(ok)})
    return rows


def figures_without_target(script: str, text: str) -> list[dict]:
    """gpu_check.py prints figures, not ratios: keep them in the table as information."""
    rows = []
    for key in ("images/s", "step time", "peak memory", "GPU busy"):
        for line in text.splitlines():
            if line.startswith(key + ":"):
                rows.append({"bench": script, "figure": key, "value": line.split(":", 1)[1].strip(), "unit": "",
                             "target": "(info)", "pass": None})
    return rows


def cuda_available() -> bool:
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                       capture_output=True, text=True)
    return r.stdout.strip() == "True"


def run_one(script: str, args: list[str], timeout: int, log) -> tuple[int | None, str, float]:
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                           timeout=timeout, cwd=BENCH.parent)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        rc = None
    return rc, out, time.perf_counter() - t


def fmt_value(row: dict) -> str:
    v = row["value"]
    if isinstance(v, float):
        s = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return s + (f" {row['unit']}" if row["unit"] else "")
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="each benchmark at its documented size (slow)")
    ap.add_argument("--bccd", action="store_true", help="also run bench/bccd.py (15 minutes)")
    ap.add_argument("--only", nargs="*", help="run only these scripts (e.g. startup.py crash_harness.py)")
    ap.add_argument("--json", default=str(BENCH / "results.json"), help="where to write the table as JSON")
    a = ap.parse_args(argv)

    rows: list[dict] = []
    runs: list[dict] = []
    t0 = time.perf_counter()
    for script, (quick, full, timeout) in PLAN.items():
        if a.only and script not in a.only and script.removesuffix(".py") not in a.only:
            continue
        path = BENCH / script
        note = ""
        if not path.exists():
            note = "skipped: not in bench/ yet"
        elif script == "bccd.py" and not a.bccd:
            note = "skipped: takes 15 minutes; pass --bccd"
        elif script == "gpu_check.py" and not cuda_available():
            note = "skipped: no CUDA device (python bench/gpu_check.py --cpu-smoke checks the code path)"
        if note:
            print(f"{script:20s} {note}", flush=True)
            runs.append({"bench": script, "status": note})
            continue
        args = full if a.full else quick
        print(f"{script:20s} running {' '.join(args) or '(defaults)'} …", flush=True)
        rc, out, secs = run_one(script, args, timeout, print)
        found = parse(script, out) + (figures_without_target(script, out) if script == "gpu_check.py" else [])
        status = "ok" if rc == 0 else ("timed out" if rc is None else f"exit {rc}")
        if not found:
            status += "; no figure with a target found in its output"
            tail = "\n".join(out.strip().splitlines()[-8:])
            print(f"{'':20s} {status}; last lines:\n{tail}", flush=True)
        else:
            print(f"{'':20s} {status} in {secs:.0f} s: {len(found)} figure(s)", flush=True)
        rows += found
        runs.append({"bench": script, "status": status, "seconds": round(secs, 1), "args": args,
                     "output_tail": out.strip().splitlines()[-30:]})

    w_fig = max([len(r["figure"]) for r in rows] + [6])
    w_val = max([len(fmt_value(r)) for r in rows] + [5])
    w_tgt = max([len(r["target"]) for r in rows] + [6])
    print()
    print(f"{'figure':{w_fig}}  {'value':>{w_val}}  {'target':{w_tgt}}  result   bench")
    print(f"{'-' * w_fig}  {'-' * w_val}  {'-' * w_tgt}  ------   -----")
    for r in rows:
        res = "info" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        print(f"{r['figure']:{w_fig}}  {fmt_value(r):>{w_val}}  {r['target']:{w_tgt}}  {res:6s}   {r['bench']}")
    failed = [r for r in rows if r["pass"] is False]
    print(f"\n{len(rows)} figures, {len(failed)} below target; {time.perf_counter() - t0:.0f} s "
          f"({'full' if a.full else 'quick'} mode)")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"mode": "full" if a.full else "quick", "time": time.time(),
                                        "figures": rows, "runs": runs}, indent=2, ensure_ascii=False))
    print(f"written: {a.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
