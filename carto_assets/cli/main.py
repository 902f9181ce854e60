"""The ``carto`` command: run a study end to end, list a model's layers, check a study, explain
an image, compare studies, audit what the classes rely on."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from carto_assets.runtime.environment import (
    DAGSTER_HOME_ENV_VAR,
    NUMBA_CACHE_ENV_VAR,
    STUDY_ENV_VAR,
)

#: The project-local instance's settings: defaults stored in DAGSTER_HOME, no telemetry
#: (and so no telemetry banner in the output).
INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def _dagster_home(home: str | None) -> Path:
    return Path(home or os.environ.get(DAGSTER_HOME_ENV_VAR) or Path.cwd() / ".dagster").resolve()


def _instance(home: str | None):
    import dagster as dg

    path = _dagster_home(home)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() or not config.read_text().strip():
        config.write_text(INSTANCE_YAML)
    os.environ[DAGSTER_HOME_ENV_VAR] = str(path)
    return dg.DagsterInstance.get()


def _log_file(home: str | None, command: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return _dagster_home(home) / "logs" / f"{command}-{stamp}-{os.getpid()}.log"


def _preflight_problems(study) -> list[str]:
    """Every user error knowable before the forward pass, one line each (tracebacks logged)."""
    from carto_assets.cli.check import preflight

    return [p.line() for p in preflight(study)]


def _report(lines: list[str], log_file: Path | None) -> None:
    for line in lines:
        print(f"carto: {line}", file=sys.stderr)
    if log_file is not None and log_file.exists():
        print(f"carto: details in {log_file}", file=sys.stderr)


def _one_line(exc: Exception) -> str:
    """``"<what failed>: <the error's own message>"``; the full error is in the log file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _summary(study) -> list[str]:
    """What was mapped and the headline quality figures, from the published database, in the
    page header's words (feature pseudo-layers are not layers of the model)."""
    from carto_assets.stages.prepared import open_store
    from carto_assets.storage import quality

    store = open_store(study)
    try:
        row = store.query(
            "SELECT (SELECT count(*) FROM neurons WHERE coalesce(kind, 'channel') = 'channel') "
            "AS channels, "
            "(SELECT count(*) FROM neurons WHERE kind = 'feature') AS features, "
            "(SELECT count(DISTINCT layer) FROM neurons "
            " WHERE coalesce(kind, 'channel') = 'channel') AS layers, "
            "(SELECT count(*) FROM clusters WHERE size > 1) AS clusters, "
            "(SELECT count(*) FROM images) AS images, "
            "(SELECT count(DISTINCT label) FROM concept_graph_nodes) AS classes"
        ).row(0, named=True)
        figures = quality.headline(store.figures())
    except Exception:  # a summary is a courtesy; the run itself succeeded
        logging.getLogger("carto").info("summary query failed", exc_info=True)
        return []
    units = f"{row['channels']:,} channels"
    if row["features"]:
        units += f" + {row['features']:,} features"
    lines = [
        f"Mapped:   {row['images']:,} images, {units} in {row['layers']} layers, "
        f"{row['clusters']:,} multi-unit clusters, concept graphs for {row['classes']:,} classes"
    ]
    for i, fig in enumerate(figures):
        lines.append(
            f"{'Quality:' if i == 0 else '':<10}{fig['figure']}: {fig['value']} ({fig['asset']})"
        )
    return lines


def _skipped(instance) -> str:
    """Image-folder files the run skipped and images that failed to decode, as the ``images``
    and ``top_images`` assets counted them ('' when none)."""
    import dagster as dg

    def latest(asset: str, key: str) -> int:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        value = event.asset_materialization.metadata.get(key) if event else None
        return int(value.value) if value is not None else 0

    files = latest("images", "n_skipped_files")
    failed = latest("top_images", "n_images_failed_to_decode")
    parts = []
    if files:
        parts.append(f"{files:,} file(s) that are not readable images (`images` metadata)")
    if failed:
        parts.append(f"{failed:,} image(s) that failed to decode (`top_images` metadata)")
    return ", ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from carto_assets.runtime.console import StageBars, log_to_file
    from carto_assets.study import StudyError, load_study

    study_file = args.study or os.environ.get(STUDY_ENV_VAR, "")
    log_file = _log_file(args.dagster_home, "run")
    log_to_file(log_file, verbose=args.verbose)
    try:
        study = load_study(study_file or None)
    except StudyError as exc:
        _report([f"invalid study: {exc}"], None)
        return 2
    if args.jobs < 1:
        _report([f"--jobs must be >= 1, got {args.jobs}"], None)
        return 2
    problems = _preflight_problems(study)
    if problems:
        _report(problems, log_file)
        return 2
    print(f"Log: {log_file}", flush=True)

    from carto_assets.cli.run import RunFailed, materialize_all
    from carto_assets.runtime import progress
    from carto_assets.storage.store import DatabaseBusyError

    instance = _instance(args.dagster_home)
    bars = StageBars()
    stop = progress.listen(bars)
    try:
        timings = materialize_all(
            study_file,
            instance,
            say=lambda m: print(m, flush=True),
            jobs=args.jobs,
            force=args.force,
            log_dir=log_file.with_suffix(""),
        )
    except (RunFailed, StudyError, DatabaseBusyError) as exc:
        bars.close()
        logging.getLogger("carto").error("run failed", exc_info=True)
        _report(exc.short if isinstance(exc, RunFailed) else [_one_line(exc)], log_file)
        return 1
    finally:
        stop()
    rate = timings["images"] / timings["activations"] if timings["activations"] else 0.0
    print(
        f"\nDone in {timings['total']:.0f} s: prepare {timings['prepare']:.0f} s, "
        f"activations {timings['activations']:.0f} s "
        f"({timings['shards_computed']:.0f} shard(s) computed, "
        f"{timings['shards_reused']:.0f} up to date"
        + (f", {rate:.0f} images/s" if timings["shards_computed"] else "")
        + f"), summaries {timings['summaries']:.0f} s "
        f"(of which {timings['publish']:.2f} s publishing {timings['publish_writes']:.0f} "
        "database snapshots)."
    )
    for line in _summary(study):
        print(line)
    skipped = _skipped(instance)
    if skipped:
        print(f"Skipped:  {skipped}")
    print(f"Database: {study.database_path}")
    views = study.views_path / "index.html"
    if views.exists():
        print(f"Views:    {views}")
    print(f"Log:      {log_file}")
    print(f"Runs are recorded in {os.environ[DAGSTER_HOME_ENV_VAR]}; `make ui` shows them.")
    return 0


def cmd_run_partition(args: argparse.Namespace) -> int:
    """One activation shard or class chunk in this process (a worker of ``carto run --jobs N``)."""
    from carto_assets.cli.run import RunFailed, execute_partition
    from carto_assets.study import StudyError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from carto_assets.assets.events import EVENTS_LOGGER

    # The parent (`carto run --jobs N`) keeps this process's output as the shard's log.
    events = logging.getLogger(EVENTS_LOGGER)
    events.setLevel(logging.DEBUG)
    events.propagate = False
    events.addHandler(logging.StreamHandler(sys.stderr))
    instance = _instance(args.dagster_home)
    try:
        execute_partition(args.study or "", args.partition, instance, args.job)
    except (RunFailed, StudyError) as exc:
        print(f"carto: {exc}", file=sys.stderr)
        if isinstance(exc, RunFailed):  # the root error last: the parent shows that line
            print(f"carto: {exc.short[-1]}", file=sys.stderr)
        return 1
    print(f"{args.partition}: done")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from carto_assets.core.network.layers import default_layers, probe_layers
    from carto_assets.core.network.zoo import BuiltinCNN, torchvision_model

    spec = args.model
    if spec == "builtin":
        module, key, size = BuiltinCNN(num_classes=10), "builtin", args.input_size or 64
    elif spec.startswith("torchvision:"):
        key = spec.split(":", 1)[1]
        try:
            module = torchvision_model(key, args.weights)
        except (ValueError, FileNotFoundError) as exc:
            print(f"carto: {exc}", file=sys.stderr)
            return 2
        size = args.input_size or 224
    else:
        print(
            f"carto: model must be 'builtin' or 'torchvision:<name>', got {spec!r}", file=sys.stderr
        )
        return 2
    try:
        infos = probe_layers(module, size)
    except ValueError as exc:
        print(f"carto: {exc}", file=sys.stderr)
        return 2
    auto = set(default_layers(key, infos))
    print(f"{'layer':<40} {'type':<22} {'channels':>8}  {'output':<16} auto")
    for i in infos:
        if not args.all and i.depth > args.depth and i.name not in auto:
            continue
        shape = "x".join(map(str, i.output_shape)) if i.output_shape else "-"
        note = "*" if i.name in auto else ""
        if i.calls > 1:
            note += f" (runs {i.calls}x: not selectable)"
        print(f"{i.name:<40} {i.type:<22} {i.channels or '-':>8}  {shape:<16} {note}")
    print(f"\n* = the 'auto' layer set ({len(auto)} layers) at {size}x{size} input")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from carto_assets.runtime.console import log_to_file
    from carto_assets.study import StudyError, load_study

    try:
        study = load_study(args.study or None)
    except StudyError as exc:
        _report([f"invalid study: {exc}"], None)
        return 2
    log_file = _log_file(None, "check")
    log_to_file(log_file, verbose=False)
    problems = _preflight_problems(study)
    if problems:
        _report(problems, log_file)
        return 2
    print(
        f"study '{study.name}' is valid: model {study.model}, dataset {study.dataset.kind}, "
        f"database {study.database_path}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two or more studies over the same images (a comparison file)."""
    from carto_assets.runtime.console import log_to_file
    from carto_assets.storage.store import DatabaseBusyError
    from carto_assets.study.comparison import ComparisonError

    log_file = _log_file(args.dagster_home, "compare")
    log_to_file(log_file, verbose=args.verbose)
    try:
        from carto_assets.stages.comparison_studies import check_studies
        from carto_assets.stages.prepared import PreparedComparison

        # Refuse at once (missing results, other images) before anything heavy is imported.
        prepared = PreparedComparison.load(args.comparison)
        check_studies(prepared)
        from carto_assets.cli.compare import run_comparison
        from carto_assets.stages.comparison import summary_lines

        comparison = run_comparison(
            args.comparison,
            _instance(args.dagster_home),
            say=lambda m: print(m, flush=True),
            prepared=prepared,
        )
    except (ComparisonError, DatabaseBusyError) as exc:
        logging.getLogger("carto").error("compare failed", exc_info=True)
        _report([_one_line(exc)], log_file)
        return 2
    for line in summary_lines(comparison):
        print(line)
    print(f"Database: {comparison.database_path}")
    print(f"Page:     {comparison.views_path / 'index.html'}")
    print(f"Log:      {log_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carto", description=__doc__)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{run,layers,check,compare,explain,audit}"
    )

    run = sub.add_parser("run", help="materialize every asset (all shard partitions) of a study")
    run.add_argument("--study", help=f"study YAML (default: ${STUDY_ENV_VAR}, else the demo study)")
    run.add_argument("--dagster-home", help="Dagster instance folder (default: ./.dagster)")
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="activation partitions run at once, each in its own process (default 1)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print Dagster's full event log (always written to the log file)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="recompute every shard, even those whose stored summary is up to date",
    )
    run.set_defaults(func=cmd_run)

    # Hidden: what each worker process of `carto run --jobs N` runs.
    part = sub.add_parser("run-partition")
    part.add_argument("--study", default="", help="study YAML ('' = the demo study)")
    part.add_argument("--partition", required=True, help="shard partition key, e.g. shard-0003")
    part.add_argument("--dagster-home", help="Dagster instance folder shared with `carto run`")
    part.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    part.add_argument(
        "--job",
        default="activation_pass",
        choices=["activation_pass", "concept_graph_chunks"],
        help="the partitioned job: activation shards or concept-graph class chunks",
    )
    part.set_defaults(func=cmd_run_partition)

    layers = sub.add_parser("layers", help="list a model's layers with channel counts")
    layers.add_argument("model", help="builtin or torchvision:<name>, e.g. torchvision:googlenet")
    layers.add_argument("--weights", default="none", help="none (default), DEFAULT or a checkpoint")
    layers.add_argument("--input-size", type=int, default=None, help="square input side in px")
    layers.add_argument("--depth", type=int, default=2, help="max module depth shown (default 2)")
    layers.add_argument("--all", action="store_true", help="show modules of every depth")
    layers.set_defaults(func=cmd_layers)

    check = sub.add_parser("check", help="validate a study file without running anything")
    check.add_argument(
        "--study", help=f"study YAML (default: ${STUDY_ENV_VAR}, else the demo study)"
    )
    check.set_defaults(func=cmd_check)

    compare = sub.add_parser(
        "compare", help="compare studies over the same images (matches, layers, concepts, page)"
    )
    compare.add_argument("comparison", help="comparison YAML naming two or more study files")
    compare.add_argument("--dagster-home", help="Dagster instance folder (default: ./.dagster)")
    compare.add_argument(
        "-v", "--verbose", action="store_true", help="also print Dagster's event log"
    )
    compare.set_defaults(func=cmd_compare)

    from carto_assets.cli.explain import add_parser as add_explain

    add_explain(sub)
    from carto_assets.cli.audit import add_parser as add_audit

    add_audit(sub)

    args = parser.parse_args(argv)
    # umap-learn compiles with numba on first use (about a minute on a small CPU); keep the
    # compiled code in one project-local folder so later runs reuse it. Must be set before
    # numba is imported.
    os.environ.setdefault(NUMBA_CACHE_ENV_VAR, str(Path.cwd() / ".numba_cache"))
    if args.command in ("run-partition", "layers"):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Dagster's SQLite storage logs its schema migrations at INFO on every run; not news.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
