"""Headless workflow commands: sweep, stats, autobatch, tune-post, journal, budget.

cli.main builds their parsers with ``add_parsers(sub)`` and runs ``COMMANDS[name](args)``. Torch loads inside the
functions, never at import (so `nanxi-tune --help` stays fast).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nanxi_tune.cli.drive import SteadyConsole

out = SteadyConsole()
err = SteadyConsole(stderr=True)


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="seven-stars sweep (七星连珠法) of one numeric key on the half-decade grid")
    s.add_argument("--preset", default="demo", help="preset name or .toml path")
    s.add_argument("--param", help="dotted numeric key, e.g. train.base_lr or loss.loss_scale")
    s.add_argument("--start", type=float, help="first grid value of the 7 (snapped to 0.001/0.003/0.01/…)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--trial-steps", type=int, help="steps per trial (default 200)")
    g.add_argument("--trial-minutes", type=float, help="wall-clock minutes per trial")
    s.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    s.add_argument("--resume", metavar="SWEEP_DIR", help="resume a stopped sweep folder (as nanxi-tune resume)")
    s.add_argument("--save", metavar="PATH", help="write the config with the best value to this .toml")
    s.add_argument("--slides", type=int, default=0, metavar="N", help="slide the window on its own up to N times "
                   "when the best sits at its edge (default 0: the table says so)")
    s.add_argument("--storage", default="", metavar="URL", help="Optuna storage: a database URL "
                   "(postgresql://…, sqlite:///…) that workers on other machines share (default: a journal file "
                   "in the sweep's folder)")
    s.add_argument("--quiet", action="store_true")
    from nanxi_tune.cli.study_cmd import add_owner_arguments

    add_owner_arguments(s)

    st = sub.add_parser("stats", help="per-channel mean/std over augmented training samples")
    st.add_argument("--preset", default="demo")
    st.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE")
    st.add_argument("--samples", type=int, default=500, help="augmented samples to measure (default 500)")
    st.add_argument("--save", metavar="PATH", help="write the config with normalize.* set to this .toml")

    a = sub.add_parser("autobatch", help="largest data.batch_size that fits (CUDA probe / CPU memory cap)")
    a.add_argument("--preset", default="demo")
    a.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE")
    a.add_argument("--cap-gb", type=float, help="memory cap in GiB (CPU default: 50%% of available RAM)")
    a.add_argument("--device", help="cpu, cuda, cuda:N (default: train.device)")
    a.add_argument("--save", metavar="PATH", help="write the config with the batch size to this .toml")

    t = sub.add_parser("tune-post", help="grid-search NMS / score threshold / top_k on a trained run")
    t.add_argument("run_dir")
    t.add_argument("--checkpoint", choices=["best", "last"], default="best")
    t.add_argument("--apply", action="store_true", help="write the best values into the run's config.toml")
    t.add_argument("--save", metavar="PATH", help="write the best values into this preset/config .toml")
    t.add_argument("--top", type=int, default=10, help="rows of the table to print (default 10)")

    j = sub.add_parser("journal", help="the runs' records in the notes' style")
    j.add_argument("--runs", dest="runs_dir", help="runs folder (default: --runs)")
    j.add_argument("--markdown", action="store_true", help="Markdown list (sweep trials nested)")
    j.add_argument("--compare", nargs=2, metavar="RUN", help="two run directories side by side")

    b = sub.add_parser("budget", help="projected full-run time at every eval vs budget.max_days")
    b.add_argument("run_dir")


# --- sweep ------------------------------------------------------------------------------------------

def sweep(args) -> int:
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.workflows import sweep as S
    from nanxi_tune.cli.study_cmd import own

    if args.resume:
        return own(Path(args.resume), args)
    if not args.param or args.start is None:
        err.print("nanxi-tune sweep: give --param KEY and --start VALUE (or --resume SWEEP_DIR)")
        return 2
    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    steps = args.trial_steps if args.trial_steps or args.trial_minutes else 200
    try:
        sw = S.Sweep.new(cfg, args.param, args.start, Path(args.runs), trial_steps=steps if not
                         args.trial_minutes else None, trial_minutes=args.trial_minutes, storage=args.storage,
                         slides=args.slides)
    except S.SweepError as e:
        err.print(f"nanxi-tune sweep: {e}")
        return 2
    err.print(f"sweep {sw.key} over {', '.join(S.value_name(v) for v in sw.values)} in {sw.dir} "
              f"({sw.cfg.eval.val_data_mode} validation)")
    return own(sw.dir, args)


# --- stats ------------------------------------------------------------------------------------------

def stats(args) -> int:
    from rich.progress import Progress

    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.workflows import normalization as ST

    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    with Progress(console=err, transient=True) as p:
        task = p.add_task("augmented samples", total=args.samples)
        st = ST.compute(cfg, args.samples, progress=lambda d, n: p.update(task, completed=d))
    table = Table("channel", "mean", "std", title=f"after augmentation: {st.samples} samples, {st.pixels} pixels "
                  "([0, 1] units)")
    for c, m, s in zip("RGB", st.mean, st.std):
        table.add_row(c, f"{m:.4f}", f"{s:.4f}")
    out.print(table)
    out.print(f"--set {ST.set_args(st)}", markup=False, highlight=False)
    if args.save:
        C.save(ST.apply(cfg, st), args.save)
        err.print(f"wrote {args.save} (normalize.source = computed)")
    return 0


# --- autobatch ----------------------------------------------------------------------------------------

def autobatch(args) -> int:
    from nanxi_tune.engine.workflows import autobatch as AB
    from nanxi_tune.engine import config as C

    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    r = AB.find_batch(cfg, cap_gb=args.cap_gb, device=args.device, progress=lambda m: err.print(m))
    out.print(f"largest batch: data.batch_size = {r.batch_size} ({r.method} on {r.device}, limited by "
              f"{r.limited_by}); lr = base_lr {r.base_lr:g} × {r.batch_size} / {cfg.train.base_batch_size} = "
              f"{r.lr:.4g}")
    out.print(r.detail, markup=False, highlight=False)
    if args.save:
        C.save(AB.apply(cfg, r), args.save)
        err.print(f"wrote {args.save}")
    return 0


# --- tune-post ------------------------------------------------------------------------------------------

def tune_post(args) -> int:
    from rich.progress import Progress

    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.workflows import tune_post as TP

    run_dir = Path(args.run_dir)
    if not (run_dir / rundir.CONFIG).exists():
        err.print(f"nanxi-tune: {run_dir}: not a run directory (no {rundir.CONFIG})")
        return 2
    err.print(f"{run_dir}: running the {args.checkpoint} checkpoint once over the val data…")
    cache = TP.cache_outputs(run_dir, args.checkpoint)
    with Progress(console=err, transient=True) as p:
        task = p.add_task("grid", total=None)
        res = TP.tune(run_dir, which=args.checkpoint, cache=cache,
                      progress=lambda d, n: p.update(task, completed=d, total=n))
    print_post(res, args.top)
    if args.apply or args.save:
        path = TP.apply(res, args.save)
        err.print(f"applied to {path}")
    else:
        TP.record(res)
    return 0


def print_post(res, top: int = 10, console: Console | None = None) -> None:
    console = console or out
    rows = sorted(res.rows, key=lambda r: (-r["mAP"], -r["AP50"]))[:top]
    if res.default not in rows:
        rows.append(res.default)
    table = Table("nms_iou", "score_threshold", "top_k", "mAP", "AP50", "detections",
                  title=f"post-processing on {res.checkpoint} ({res.mode}, {res.images} images, "
                        f"{len(res.rows)} points, forward once {res.forward_seconds:.1f}s, search "
                        f"{res.search_seconds:.1f}s)")
    for r in rows:
        tag = " ★" if r is res.best else (" (defaults)" if r["default"] else "")
        table.add_row(f"{r['postprocess.nms_iou']:g}", f"{r['postprocess.score_threshold']:g}",
                      str(r["postprocess.top_k"]), f"{r['mAP']:.4f}{tag}", f"{r['AP50']:.4f}", str(r["detections"]),
                      style="bold green" if r is res.best else "")
    console.print(table)
    from nanxi_tune.engine.workflows.tune_post import fmt_choices, fmt_point

    if fmt_choices(res):
        console.print(fmt_choices(res) + " (the table's rows use these choices)")
    console.print(f"best: {fmt_point(res.best)} — mAP {res.best['mAP']:.4f} vs defaults {res.default['mAP']:.4f}")


# --- journal / budget --------------------------------------------------------------------------------------

def journal(args) -> int:
    from nanxi_tune.engine.workflows import records as J

    if args.compare:
        cmp = J.compare(Path(args.compare[0]), Path(args.compare[1]))
        table = Table("key", Path(cmp["a"]).name, Path(cmp["b"]).name, title=cmp["summary"])
        for k, a, b in cmp["diff"]:
            table.add_row(k, str(a), str(b))
        out.print(table)
        return 0
    root = Path(args.runs_dir or args.runs)
    recs = J.records(root)
    if not recs:
        err.print(f"no runs in {root}")
        return 0
    text = J.render_records(recs, markdown=args.markdown)
    if args.markdown:
        sys.stdout.write(f"# journal of {root}\n\n{text}")
    else:
        out.print(text, markup=False, highlight=False)
    return 0


def budget(args) -> int:
    from nanxi_tune.engine.diagnosis import projection as B

    for p in B.project_run(Path(args.run_dir)):
        out.print(p.text(), style="yellow" if p.over else "", markup=False, highlight=False)
    return 0


COMMANDS = {"sweep": sweep, "stats": stats, "autobatch": autobatch, "tune-post": tune_post, "journal": journal,
            "budget": budget}
