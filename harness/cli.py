"""``harness``: run, validate, list methods, rebuild a report, benchmark methods, prepare data.

Every error is one line on stderr (``harness: error: ...``) and one rule of exit codes holds
for every command (``harness.errors``): 0 done, 1 the work failed (or some trials did), 2 bad
input (experiment file, arguments, data, run directory state), 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from harness.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    RunError,
    RunRefused,
    handle_sigterm,
    was_terminated,
)
from reports.format import plural


def _stopped(exc: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if was_terminated(exc) else "interrupted"


def _interrupted_code(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if was_terminated(exc) else EXIT_INTERRUPTED


def _err(message: str) -> None:
    for line in message.splitlines() or [message]:
        print(f"harness: error: {line}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr)


def _wide_console() -> Console:
    """The terminal's console; for logs and pipes $COLUMNS if set, else one wide enough for
    every column of a table."""
    console = Console()  # reads $COLUMNS itself
    return console if console.is_terminal or os.environ.get("COLUMNS") else Console(width=180)


def _load(args: argparse.Namespace):
    """The experiment of ``run`` / ``validate``: CONFIG, its KEY=VALUE overrides, ``--name``."""
    from harness.config import load_config

    return load_config(args.config, args.overrides, name=getattr(args, "name", None))


def cmd_validate(args: argparse.Namespace) -> int:
    """The schema, then the same pre-flight as ``harness run`` (files, data source, split
    sizes, pretrained weights), without starting Ray. With a cluster address (``--address``,
    ``cluster.address`` or ``RAY_ADDRESS``) paths are the cluster's: their checks are skipped
    and listed."""
    from harness.preflight import cluster_address, preflight

    cfg = _load(args)
    for line in cfg.warnings:
        _warn(line)
    address = cluster_address(cfg, getattr(args, "address", None))
    checked = preflight(cfg, local=not address)
    sizes = checked.sizes
    split_text = f" ({_split_counts(sizes)} images)" if sizes else ""
    given = " ".join([args.config, *args.overrides])
    print(
        f"{given}: ok ({plural(cfg.trial_count, 'trial')}: {_grid_shape(cfg)}, "
        f"data {cfg.data.dataset}{split_text}, "
        f"{plural(len(cfg.data.task_names()), 'task')}, {plural(cfg.train.epochs, 'epoch')})"
    )
    for item in checked.unchecked:
        print(f"  not checked here: {item}")
    return 0


def _grid_shape(cfg) -> str:
    """How the trials multiply: ``3 methods x 3 seeds x 1 backbone`` plus the sweep's
    settings, the tuning protocol and the single-task references when present."""
    g = cfg.grid
    parts = [plural(len(g.methods), "method"), plural(len(g.backbones), "backbone")]
    if g.sweep:
        counts = sorted({len(cfg.sweep_points(m)) for m in g.methods})
        shown = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        parts.append(f"{shown} swept settings" + (" (by method)" if len(counts) > 1 else ""))
    seeds = plural(len(g.seeds), "seed")
    if cfg.tuning is not None:
        t = cfg.tuning
        studies = plural(t.studies, "study")
        parts += [studies, f"({t.budget} tuning + {len(g.seeds)} final {seeds.split()[1]})"]
    else:
        parts.append(seeds)
    shape = " x ".join(parts)
    if g.single_task:
        tasks = len(cfg.data.task_names())
        shape += f", + {plural(tasks, 'single-task reference')} per backbone and seed"
    return shape


def cmd_schema(args: argparse.Namespace) -> int:
    """The experiment file's JSON Schema, on stdout or in ``--output``."""
    from harness.config import json_schema_text

    text = json_schema_text()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    output = Path(args.output)
    if output.is_dir():
        raise RunRefused(f"--output {output} is a directory; give a file name")
    try:
        output.write_text(text)
    except OSError as exc:
        raise RunRefused(f"--output {output}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {output}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.text import Text

    import methods

    table = Table(title="Registered task-weighting methods", title_justify="left")
    # one level and one setting a line, never cut: on a narrow screen only the text wraps
    for col in ("method\n(levels)", "hyperparameters\n(defaults)"):
        table.add_column(col, no_wrap=True)
    # one text column, so that an 80-column pipe still reads: summary, cost, heads, source
    table.add_column("summary / cost per step / heads / reference", overflow="fold")
    for info in methods.describe():
        params = "\n".join(f"{k}={v}" for k, v in info.hyperparameters.items()) or "—"
        about = Text(info.summary)
        cost = f"cost: {info.cost}"
        if info.level != "loss":
            cost += f"; heads: {info.default_heads}"
        about.append("\n" + cost)
        if info.reference:
            about.append("\n" + info.reference, style="dim")
        name = Text(info.name)
        name.append("".join(f"\n {level}" for level in info.levels), style="dim")
        table.add_row(name, Text(params), about)
    # the terminal's width; piped, $COLUMNS or 80 (rich's default): `| head` fits the screen
    Console().print(table)
    return 0


def _print_summary(written) -> None:
    """The summary table, then the report's verdict and notes: the answer, in words, where the
    user is looking (the same sentences as the HTML and summary.md)."""
    import reports

    results = written.results
    console = _wide_console()
    console.print(
        reports.summary_rich(
            written.summary, f"{results.name}: summary", results.workload_is_backbone
        )
    )
    for workload, sentences in written.verdict:
        heading = f"verdict ({workload})" if len(written.verdict) > 1 else "verdict"
        # markup=False: a merged report's workload ends in "[run name]"
        console.print(f"{heading}:", style="bold", markup=False, highlight=False)
        for sentence in sentences:
            console.print(f"  - {sentence}", markup=False, highlight=False)
    for note in written.notes:
        console.print(f"note: {note}", markup=False, highlight=False, style="dim")


def cmd_report(args: argparse.Namespace) -> int:
    import reports

    given = {"baseline": args.baseline, "target_fraction": args.target_fraction}
    options = reports.ReportOptions(**{k: v for k, v in given.items() if v is not None})
    written = reports.write_report(
        args.run_dirs, out=args.out, options=options, overwrite=args.overwrite
    )
    # an explicit --baseline that did not run is refused by write_report; the default may be
    # absent (a grid without equal), which only leaves the comparisons out
    if options.baseline_method not in set(written.results.trials["method"].dropna()):
        _warn(
            f"baseline method {options.baseline_method!r} is not in these runs; the report "
            "leaves out the comparisons with it"
        )
    _print_summary(written)
    print(f"report: {written.html}")
    print(f"summary: {written.summary_csv}, {written.summary_md}")
    return 0


def _note(message: str) -> None:
    """What a long start is doing, at once (imports and Ray's start take tens of seconds)."""
    print(f"harness: {message}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    handle_sigterm()
    if args.resume and args.overwrite:
        raise RunRefused("--resume and --overwrite exclude each other; give one")
    cfg = None
    try:
        cfg = _load(args)  # a bad file or override is refused before torch loads
        for line in cfg.warnings:
            _warn(line)
        _note(f"{args.config}: loading torch ...")
        from harness.launch import TUNE_LOG, run_experiment

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        outcome = run_experiment(
            cfg,
            address=args.address,
            resume=args.resume,
            overwrite=args.overwrite,
            notify=_note,
            overrides=args.overrides,
        )
    except KeyboardInterrupt as exc:
        from harness.rundir import read_manifest

        run_dir = Path(cfg.output.dir).expanduser().resolve() / cfg.name if cfg else None
        if run_dir is not None and read_manifest(run_dir) is not None:
            _err(f"{_stopped(exc)}; finished trials are kept: run again with --resume to continue")
        else:  # stopped while starting: the run left nothing
            _err(f"{_stopped(exc)}; nothing was kept: run the same command again")
        return _interrupted_code(exc)
    written = outcome.report
    _print_summary(written)
    print(f"report: {written.html}")
    failed = outcome.failed
    diverged = [r for r in outcome.records if r.status == "diverged"]
    if diverged:
        print(
            f"{plural(len(diverged), 'trial')} diverged (non-finite loss); see the report",
            file=sys.stderr,
        )
    if failed:
        for record in failed:
            _err(f"trial {record.data['identity']['trial_id']} failed: {record.data['error']}")
        rest = (
            f"results of the others are in {outcome.run_dir}"
            if len(failed) < len(outcome.records)
            else f"their records are in {outcome.run_dir}"
        )
        log = outcome.run_dir / "ray" / TUNE_LOG
        logged = log.is_file() and "Traceback" in log.read_text(errors="replace")
        tracebacks = f" (tracebacks: {log})" if logged else ""
        _err(f"{len(failed)} of {len(outcome.records)} trials failed; {rest}{tracebacks}")
        return EXIT_FAILED
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from harness.bench_spec import BenchError, BenchSettings, parse_methods

    # the arguments first: a bad one is one line before torch loads
    settings = BenchSettings(
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        tasks=args.tasks,
        device=args.device,
        amp=args.amp,
    )
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise BenchError(f"--output {output} is a directory; give a file name")
    if not args.compare and not args.methods:
        args.parser.error("the following arguments are required: --methods")
    specs = None if args.compare else parse_methods(args.methods, settings.tasks)

    import torch
    from rich import box
    from rich.measure import Measurement
    from rich.text import Text

    from harness import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:  # harness/bench_compare.py: the routes, their table and JSON
        from harness import bench_compare

        return bench_compare.command(args, settings, _wide_console())
    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("starting") as status:
        rows = bench.run_bench(
            specs, settings, progress=lambda text: status.update(f"{text} ({bench.elapsed(start)})")
        )
    if output is not None:
        bench.write_json(output, rows)
    machine = bench.machine_description(settings.device)
    where = machine.get("gpu") or f"{machine['cpu']}, {plural(machine['threads'], 'thread')}"
    title = (
        f"{settings.backbone}, {plural(settings.tasks, 'task')}, {settings.image_size} px, "
        f"batch {settings.batch_size}, {plural(settings.steps, 'step')}, {where}, "
        f"amp {settings.amp}"
    )
    columns = (  # header, its two-line form for a narrow screen, key, format
        ("step ms", "step\nms", "step_time_ms", "{:.1f}"),
        ("x equal", "x\nequal", "ratio_vs_equal", "{:.2f}"),
        ("epoch x equal", "epoch\nx equal", "epoch_ratio_vs_equal", "{:.2f}"),
        ("FLOPs x equal", "FLOPs\nx equal", "flop_ratio_vs_equal", "{:.2f}"),
        ("wall / FLOP ratio", "wall /\nFLOP", "wall_over_flop_ratio", "{:.2f}"),
        ("peak MB", "peak\nMB", "peak_memory_mb", "{:.0f}"),
        ("+MB vs equal", "+MB vs\nequal", "extra_memory_mb_vs_equal", "{:+.0f}"),
        ("J MB", "J\nMB", "jacobian_mb", "{:.0f}"),
        ("images/s", "images\n/s", "images_per_second", "{:.0f}"),
    )
    if all(r["epoch_ratio_vs_equal"] == r["ratio_vs_equal"] for r in rows):
        # one batch per step for every method: the epoch ratio is the step ratio
        columns = tuple(c for c in columns if c[2] != "epoch_ratio_vs_equal")

    def bench_table(compact: bool) -> Table:
        """Compact: no borders, two-line headers, the level under the method; never a number
        or a method cut."""
        table = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
            show_edge=not compact,
            padding=(0, 0) if compact else (0, 1),
        )
        names = ("method\nlevel",) if compact else ("method", "level")
        for name in names:
            table.add_column(name, no_wrap=True)
        for header, short, _, _ in columns:
            table.add_column(short if compact else header, justify="right", no_wrap=True)
        for row in rows:
            name = (
                (f"{row['method']}\n{row['level']}",) if compact else (row["method"], row["level"])
            )
            values = (fmt.format(row[key]) for _, _, key, fmt in columns)
            table.add_row(*map(Text, (*name, *values)))
        return table

    console = _wide_console()
    table = bench_table(compact=False)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.print(table if natural <= console.width else bench_table(compact=True))
    if output is not None:
        print(f"wrote {output}")
    return 0


class _LineBar:
    """Progress of ``data prepare`` for logs and pipes: a line every 10 % or 30 s."""

    def __init__(self, console: Console):
        import time

        self.console, self.clock = console, time.monotonic
        self.started = self.last = self.clock()
        self.first: int | None = None
        self.step = self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = done
        step = 10 * done // max(total, 1)
        if done == self.shown or (step == self.step and now - self.last < 30 and done < total):
            return
        self.step, self.last, self.shown = step, now, done
        rate = (done - self.first) / max(now - self.started, 1e-9)
        self.console.print(
            f"prepare: {done}/{total} images ({100 * done / max(total, 1):.0f}%)"
            + (f", {rate:.0f} images/s" if done > self.first else ""),
            highlight=False,
            soft_wrap=True,
        )


def _prepare_with_bar(run, console: Console):
    """Call ``run(progress)`` with a rich bar on a terminal, plain lines otherwise."""
    if not console.is_terminal:
        return run(_LineBar(console))
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("decoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("decoding", total=None, rate="—")
        state: dict[str, float] = {}

        def update(done: int, total: int) -> None:
            import time

            now = time.monotonic()
            state.setdefault("first", done)
            state.setdefault("started", now)
            elapsed = max(now - state["started"], 1e-9)
            rate = f"{(done - state['first']) / elapsed:.0f}" if elapsed > 0.5 else "—"
            bar.update(task, completed=done, total=total, rate=rate)

        return run(update)


def _split_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {count}" for split, count in counts.items())


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from deepchest.data.prepare import PrepareFailed, check_image_size, prepare

    out = Path(args.out)
    try:
        size = check_image_size(args.image_size)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers: {args.workers} must be at least 1")
        if args.max_bad < 0:
            raise ValueError(f"--max-bad: {args.max_bad} must be at least 0")
        options: dict = {"val_fraction": args.val_fraction, "seed": args.seed}
        for name in ("uncertain", "views"):
            value = getattr(args, name)
            if value is None:
                continue
            if args.dataset != "chexpert":
                raise ValueError(f"--{name}: applies to chexpert only, not {args.dataset}")
            options[name] = value
        if not Path(args.root).is_dir():
            raise ValueError(f"--root: {args.root} is not an existing folder")
        from deepchest.data.readers import read_index

        index = read_index(args.dataset, args.root, **options)
        sizes = index.split_sizes()
        print(
            f"{index.dataset}: {len(index)} images ({_split_counts(sizes)}), "
            f"{len(index.task_names)} tasks -> {out} at {size} px",
            flush=True,
        )
        report = _prepare_with_bar(
            lambda progress: prepare(
                index,
                out,
                size,
                workers=args.workers,
                max_bad=args.max_bad,
                progress=progress,
                overwrite=args.overwrite,
            ),
            Console(stderr=True),
        )
    except PrepareFailed as exc:
        _err(str(exc))
        return EXIT_FAILED
    except ValueError as exc:  # DatasetError included: bad arguments or input
        _err(str(exc))
        return EXIT_BAD_INPUT
    except OSError as exc:
        _err(f"{out}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        _err(
            f"{_stopped(exc)}; finished shards are kept in {out}: rerun the same command to resume"
        )
        return _interrupted_code(exc)
    print(f"prepared {report.dataset} into {out}: {report.n_images} images at {size} px")
    print(f"  usable: {_split_counts(report.counts)}")
    if report.n_bad:
        print(
            f"  bad: {report.n_bad} unreadable or missing images, left out "
            f"(listed in {report.bad_path})"
        )
    else:
        print("  bad: 0")
    print(
        f"  decoded {report.decoded} images in {report.seconds:.1f} s "
        f"({report.images_per_second:.0f} images/s); reused {report.reused_shards} of "
        f"{report.shards} shards"
    )
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    import time

    from deepchest.data import DatasetError
    from deepchest.data.packed import inspect_packed

    start = time.perf_counter()
    try:
        info = inspect_packed(args.dir, verify=True)
    except DatasetError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        _err(f"{_stopped(exc)}; nothing was changed")
        return _interrupted_code(exc)
    print(
        f"{args.dir}: ok: {info.dataset} at {info.image_size} px, {len(info.task_names)} "
        f"tasks, {info.n_images} images in {info.shards} shards, every sha256 matches "
        f"({time.perf_counter() - start:.1f} s)"
    )
    print(f"  usable: {_split_counts(info.counts)}")
    print(
        f"  bad: {info.n_bad}"
        + (
            f" left out ({_split_counts(info.skipped)}; listed in {info.bad_path})"
            if info.n_bad
            else ""
        )
    )
    if info.restamped:
        print("  images.npy had a new modification time (copied?); content intact, time recorded")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import check_run_dir, export_model

    check_run_dir(Path(args.run_dir))  # before torch loads (seconds)
    _note("loading torch ...")

    exported = export_model(
        args.run_dir,
        args.out,
        method=args.method,
        backbone=args.backbone,
        ood_quantile=args.ood_quantile,
        overwrite=args.overwrite,
        notify=_note,
    )
    card = exported.card
    test = [v for v in card["metrics"]["test_auroc"].values() if v is not None]
    mean_test = f"{sum(test) / len(test):.3f}" if test else "n/a"
    print(
        f"exported {exported.trial_id} ({card['training']['method']}, {card['backbone']}, "
        f"seed {card['training']['seed']}) to {exported.path}"
    )
    print(
        f"  mean test AUROC {mean_test}; thresholds by Youden's J on val; out-of-distribution "
        f"refusal: {card['ood']['test_false_refusal_rate']:.1%} of the test split"
    )
    return 0


def _is_image_file(path: Path) -> bool:
    """An image by its suffix, or a DICOM file without one (``DICM`` at byte 128)."""
    from deepchest.inference import IMAGE_SUFFIXES

    if not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _image_files(paths: list[str]) -> list[Path]:
    """Files as given, and a folder's image files (by suffix, or DICOM files without one;
    sorted), in order."""
    from deepchest.inference import IMAGE_SUFFIXES

    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_image_file(p))
            if not found:
                raise RunRefused(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import json

    import torch

    from deepchest.inference import ImageError, load_bundle, read_image

    if args.device == "cuda" and not torch.cuda.is_available():
        raise RunRefused("--device cuda: torch sees no CUDA device on this machine")
    bundle = load_bundle(_existing_bundle(args.model), device=args.device)
    results, failed = [], 0
    for path in _image_files(args.images):
        try:
            image = read_image(path.read_bytes(), bundle.decode_size)
        except (ImageError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _err(f"{path}: {reason}")
            failed += 1
            continue
        prediction = bundle.predict(image[None])[0]
        if not prediction.in_distribution:
            _warn(
                f"{path}: unlike the images the model was trained on (distance "
                f"{prediction.distance:.1f} > {bundle.card['ood']['threshold']:.1f}); its "
                "probabilities mean little"
            )
        results.append(
            {
                "image": str(path),
                "in_distribution": prediction.in_distribution,
                "findings": bundle.findings_json(prediction),
            }
        )
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            ["image", "in_distribution", "finding", "probability", "threshold", "above"]
        )
        for result in results:
            for f in result["findings"]:
                row = [f["name"], f"{f['probability']:.6f}", f"{f['threshold']:.6f}", f["above"]]
                writer.writerow([result["image"], result["in_distribution"], *row])
    else:
        console = _wide_console()
        for result in results:
            # the path above the table, whole: a table title wraps at the table's width
            console.print(result["image"], style="bold", markup=False, highlight=False)
            table = Table()
            for column in ("finding", "probability", "threshold", "above"):
                table.add_column(column, justify="left" if column == "finding" else "right")
            for f in result["findings"]:
                above = "yes" if f["above"] else "no"
                table.add_row(f["name"], f"{f['probability']:.3f}", f"{f['threshold']:.3f}", above)
            console.print(table)
        if results:
            print(
                "A probability is the model's score for the finding; 'above' means it is at or "
                "over the finding's operating threshold, chosen on the validation split "
                "(Youden's J). Research output, not a diagnosis.",
                file=sys.stderr,
            )
    return EXIT_BAD_INPUT if failed else 0


def _bundle_in(path: str) -> Path | None:
    """The bundle folder that ``path`` names: itself, its ``model.json``'s folder, or a run
    directory's ``model/``; None when there is none."""
    from deepchest.inference import CARD_FILE
    from harness.export import MODEL_DIR

    given = Path(path)
    if given.name == CARD_FILE and given.is_file():
        return given.parent
    for folder in (given, given / MODEL_DIR):
        if (folder / CARD_FILE).is_file():
            return folder
    return None


def _existing_bundle(path: str) -> Path:
    """``harness predict``'s MODEL: a bundle, or a run directory that has exported one."""
    if not Path(path).exists():
        raise RunRefused(f"{path}: no such file or folder")
    found = _bundle_in(path)
    if found is None:
        hint = (
            f" (export one: harness export {path})"
            if (Path(path) / "config.yaml").is_file()
            else ""
        )
        raise RunRefused(f"{path}: no model bundle (model.json) here{hint}")
    return found


def _bundle_for(path: str) -> Path:
    """``harness serve``'s MODEL_OR_RUN_DIR: a bundle, or a run directory's bundle, exported
    first when the run has none."""
    from harness.export import check_run_dir, export_model

    found = _bundle_in(path)
    if found is not None:
        return found
    check_run_dir(Path(path))
    _note(f"{path} has no exported model yet: exporting its best trial ...")
    return export_model(path, notify=_note).path


def cmd_serve(args: argparse.Namespace) -> int:
    if args.max_mb <= 0:
        raise RunRefused(f"--max-mb must be positive, got {args.max_mb:g}")
    if not 1 <= args.port <= 65535:
        raise RunRefused(f"--port must be 1 .. 65535, got {args.port}")
    if not args.ray and (args.replicas != 1 or args.address):
        raise RunRefused("--replicas and --address go with --ray (a Ray Serve deployment)")
    if not args.ray:
        _check_port(args.host, args.port)
    if not Path(args.model).exists():
        raise RunRefused(f"{args.model}: no such file or folder")
    _note("loading torch ...")
    from deepchest.inference import load_bundle

    bundle_dir = _bundle_for(args.model)
    max_bytes = int(args.max_mb * 2**20)
    if args.ray:
        from harness.serve.ray_app import run_on_ray

        return run_on_ray(
            bundle_dir, args.host, args.port, args.replicas, args.address, max_bytes, _note
        )
    import uvicorn

    from harness.serve.app import create_app

    app = create_app(load_bundle(bundle_dir), max_bytes=max_bytes)
    _check_port(args.host, args.port)  # again: the export may have taken a while
    _note(f"serving {bundle_dir} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    # uvicorn handles Ctrl-C and SIGTERM itself and returns: a server's normal end, exit 0
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse, in one line, a host or port that cannot be listened on (before the page is
    announced there)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RunError(f"cannot listen on {host}:{port}: {reason}") from None


_OVERRIDES_HELP = (
    "set a key of the file, YAML-typed, after reading it: train.epochs=1, train.lr=3e-4, "
    "grid.seeds=[0,1,2], method_params.upgrad.update_every=10 (new keys are created)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (exit 2) instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        _err(f"{message} (see {self.prog} --help)")
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Benchmark multi-task task-weighting methods on chest X-ray classification.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train the grid of an experiment file on Ray")
    run.add_argument("config", help="experiment YAML file")
    # default=[]: argparse would list a '*' positional without one as required
    run.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    run.add_argument(
        "--address",
        help="Ray cluster address (default: cluster.address, RAY_ADDRESS, else a local Ray)",
    )
    run.add_argument("--name", help="run name (overrides the file's `name`)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: keep finished trials, run the others",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run directory of the same name first",
    )
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check an experiment file without starting Ray")
    validate.add_argument("config")
    validate.add_argument(
        "overrides", nargs="*", default=[], metavar="KEY=VALUE", help=_OVERRIDES_HELP
    )
    validate.add_argument(
        "--address",
        help="the Ray cluster the run will join (default: cluster.address, RAY_ADDRESS): its "
        "paths are not checked here",
    )
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser(
        "schema",
        help="print the experiment file's JSON Schema (for editors: yaml-language-server)",
        description="Print the JSON Schema of experiment files, every key with its "
        "description and default (experiments/schema.json is this output). Editors that use "
        "yaml-language-server (VS Code's YAML extension) check and complete a file whose "
        "first line is `# yaml-language-server: $schema=PATH/schema.json`.",
    )
    schema.add_argument("--output", metavar="FILE", help="write it to FILE instead")
    schema.set_defaults(func=cmd_schema)

    methods_ = sub.add_parser("methods", help="list the registered task-weighting methods")
    methods_.set_defaults(func=cmd_methods)

    report = sub.add_parser(
        "report",
        help="rebuild the report of one run directory, or merge several into one comparison",
        description="Write the HTML report and its summary files from run directories' "
        "Parquet tables and manifests (no torch or Ray needed).",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument(
        "--out",
        help="the HTML file to write, X.summary.csv and X.summary.md beside it (default: "
        "RUN_DIR/report.html with summary.csv and summary.md; required with several)",
    )
    report.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out report and its summary files (a run's own report in "
        "its directory is always replaced)",
    )
    report.add_argument("--baseline", help="method the others are compared with (default: equal)")
    report.add_argument(
        "--target-fraction",
        type=float,
        help="time to result: the target is this fraction of the baseline's final mean val "
        "AUROC (default: 0.98)",
    )
    report.set_defaults(func=cmd_report)

    bench = sub.add_parser(
        "bench",
        help="time training steps of methods side by side (one process, no Ray)",
        description=(
            "Time training steps of each method on one synthetic batch, the methods taking turns "
            "step by step, and report step time, the ratio to equal weighting, the FLOP ratio "
            "and peak memory. A method may carry hyperparameters: mgda:level=representation."
        ),
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        help="methods, comma- or space-separated (equal is added as the baseline); required "
        "unless --compare, whose default is mgda upgrad pcgrad",
    )
    bench.add_argument(
        "--compare",
        choices=("torchjd",),
        help="time each gradient method's step here against TorchJD 0.18 (mtl_backward + "
        "jac_to_grad, with and without optimize_gramian_computation; autogram) and T plain "
        "retained backward passes; --output then writes a JSON object with the settings",
    )
    bench.add_argument("--backbone", default="resnet18")
    bench.add_argument("--image-size", type=int, default=64)
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--steps", type=int, default=20, help="timed steps per method")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    bench.add_argument("--tasks", type=int, default=14, help="number of tasks (heads)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--amp", choices=("off", "auto", "bf16", "fp16"), default="off")
    bench.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    bench.add_argument("--output", help="write the results as a JSON list to this file")
    bench.set_defaults(func=cmd_bench)

    data = sub.add_parser(
        "data", help="decode a real data set once into packed arrays (prepare), check them"
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = data_sub.add_parser(
        "prepare",
        help="decode every image of a data set into OUT (images.npy, index.parquet)",
        description=(
            "Decode every image of a data set once, on all cores, to grey uint8 squares in "
            "OUT/images.npy (memory-mapped by training), with OUT/index.parquet (labels), "
            "OUT/manifest.json and OUT/bad.txt (unreadable or missing images). Interrupted, "
            "the same command resumes; other inputs into the same OUT need --overwrite."
        ),
    )
    prep.add_argument("--dataset", choices=("nih", "chexpert"), required=True)
    prep.add_argument("--root", required=True, help="the data set's folder")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--image-size", type=int, default=256, help="side in pixels (8 .. 2048)")
    prep.add_argument("--workers", type=int, help="decoding processes (default: every CPU)")
    prep.add_argument(
        "--max-bad",
        type=int,
        default=0,
        help="unreadable or missing images tolerated (left out and counted); more fail",
    )
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    prep.add_argument(
        "--uncertain",
        choices=("ignore", "zeros", "ones"),
        help="chexpert: uncertain labels masked out (ignore) or set to 0 or 1",
    )
    prep.add_argument(
        "--views", choices=("frontal", "all"), help="chexpert: frontal views only, or all"
    )
    prep.add_argument(
        "--overwrite", action="store_true", help="replace OUT prepared from other inputs"
    )
    prep.set_defaults(func=cmd_data_prepare)
    verify = data_sub.add_parser(
        "verify", help="check a prepared folder, recomputing every shard's sha256"
    )
    verify.add_argument("dir")
    verify.set_defaults(func=cmd_data_verify)
    export = sub.add_parser(
        "export",
        help="write the best trial of a run as a model bundle (safetensors + model.json)",
        description="Pick the run's best trial by mean val AUROC (never test), and write its "
        "best weights (model.safetensors) and model card (model.json: findings, "
        "preprocessing, training data, per-finding val and test AUROC, operating thresholds "
        "chosen on val, out-of-distribution statistics).",
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--method", help="only trials of this method (a name of grid.methods)")
    export.add_argument("--backbone", help="only trials of this backbone")
    export.add_argument("--out", help="the bundle's folder (default: RUN_DIR/model)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder's files (the run's own model/ is always replaced)",
    )
    export.add_argument(
        "--ood-quantile",
        type=float,
        default=0.99,
        help="refuse images farther from the training features than this quantile of the "
        "validation images' distances (default: 0.99)",
    )
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser(
        "predict",
        help="each finding's probability for chest X-ray images (PNG, JPEG, DICOM)",
        description="Predict with an exported model bundle; images are decoded and resized "
        "exactly as training's were. Research output, not a diagnosis.",
    )
    predict.add_argument("model", metavar="MODEL", help="a bundle folder (harness export)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="a table per image, a JSON list, or CSV rows (default: table)",
    )
    predict.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the model runs (default: cpu)",
    )
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser(
        "serve",
        help="a web page and JSON API to try a model on an X-ray image (research demo)",
        description="Serve the page 'upload your X-ray image and get interpretation' and "
        "its JSON API (/api/predict, OpenAPI docs at /docs) for a model bundle, or for a run "
        "directory's best trial (exported first when needed). Research output, not a "
        "diagnosis.",
    )
    serve.add_argument("model", metavar="MODEL_OR_RUN_DIR")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--max-mb", type=float, default=25.0, help="largest upload in MiB (default: 25)"
    )
    serve.add_argument("--ray", action="store_true", help="run the app as a Ray Serve deployment")
    serve.add_argument("--replicas", type=int, default=1, help="with --ray: replicas")
    serve.add_argument(
        "--address", help="with --ray: the Ray cluster (default: RAY_ADDRESS, else a local Ray)"
    )
    serve.set_defaults(func=cmd_serve)

    # each command's own parser, so that an unknown option points at that command's --help
    for command in (*sub.choices.values(), *data_sub.choices.values()):
        command.set_defaults(parser=command)
    return parser


# errors of the heavier modules, matched only once their module is loaded (it raised them)
_BAD_INPUT_ERRORS = (
    ("harness.config", "ConfigError"),
    ("harness.bench_spec", "BenchError"),
    ("reports.load", "ReportError"),
    ("deepchest.inference", "BundleError"),
    ("deepchest.data", "DatasetError"),
)


def _exit_code(exc: Exception) -> int | None:
    """The documented exit code of a user-facing error, None for a bug (shown as such)."""
    if isinstance(exc, RunError):
        return exc.exit_code
    for module, name in _BAD_INPUT_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return EXIT_BAD_INPUT
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and hasattr(args, "overrides"):  # KEY=VALUE after an option: argparse leaves it
        args.overrides += [item for item in unknown if not item.startswith("-")]
        unknown = [item for item in unknown if item.startswith("-")]
    if unknown:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except BrokenPipeError:  # `harness predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        for line in getattr(exc, "lines", None) or [str(exc)]:
            _err(line)
        return code
    except KeyboardInterrupt as exc:  # `run` and `data` say what they kept themselves
        _err(f"{_stopped(exc)}; nothing half-written is left")
        return _interrupted_code(exc)


if __name__ == "__main__":
    sys.exit(main())
