"""What carto run shows: one line (or bar) per stage; the event log goes to the log file."""

import io
import logging

from carto_assets.runtime.console import EVENTS_LOGGER, StageBars, log_to_file


def test_each_stage_prints_one_line_when_it_finishes_off_a_terminal():
    out = io.StringIO()
    bars = StageBars(stream=out, bars=False)
    for done in range(0, 101, 10):
        bars("activations", done, 100, "images")
    bars("shard-0000", 5, 10, "images")  # not a stage: ignored
    for epoch in range(0, 4):
        bars("embedding", epoch, 3, "epochs")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  activations: 100 images in ") and "images/s" in lines[0]
    assert lines[1].startswith("  embedding: 3 epochs in ")


def test_bars_on_a_terminal_draw_and_close(monkeypatch):
    out = io.StringIO()
    bars = StageBars(stream=out, bars=True)
    for done in range(0, 11):
        bars("concept graph", done, 10, "classes")
    assert "concept graph" in out.getvalue() and "10/10" in out.getvalue()


def _event_logger_state():
    events, root = logging.getLogger(EVENTS_LOGGER), logging.getLogger()
    return list(events.handlers), list(root.handlers), root.level


def test_the_event_log_goes_to_the_file_and_to_the_terminal_only_with_verbose(tmp_path, capsys):
    saved = _event_logger_state()
    events, root = logging.getLogger(EVENTS_LOGGER), logging.getLogger()
    try:
        for verbose in (False, True):
            log_file = tmp_path / f"run-{verbose}.log"
            handlers = log_to_file(log_file, verbose=verbose)
            events.debug("summaries - run - STEP_SUCCESS - Finished execution of step")
            for h in handlers:
                h.close()
                events.removeHandler(h)
                root.removeHandler(h)
            assert "STEP_SUCCESS" in log_file.read_text()
            assert ("STEP_SUCCESS" in capsys.readouterr().err) is verbose
    finally:
        events.handlers[:], root.handlers[:] = saved[0], saved[1]
        root.setLevel(saved[2])
        logging.captureWarnings(False)


def test_a_failed_run_is_one_line_naming_the_job_and_the_error():
    from carto_assets.cli.main import _one_line
    from carto_assets.cli.run import RunFailed

    exc = RunFailed(
        "summaries failed:\nRuntimeError: activations are not up to date for shard-0001\n\n"
        "Stack Trace:\n  File ..."
    )
    assert _one_line(exc) == (
        "summaries failed: RuntimeError: activations are not up to date for shard-0001"
    )


def test_a_failed_step_is_named_with_its_root_error():
    import dagster as dg

    from carto_assets.cli.run import run_failed

    @dg.asset
    def patches() -> None:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise OSError(28, "No space left on device", "/data/x.parquet") from exc

    result = dg.materialize([patches], raise_on_error=False)
    exc = run_failed("summaries", result)
    assert exc.short == [
        "summaries failed at step patches",
        "OSError: [Errno 28] No space left on device: '/data/x.parquet'",
    ]
    # The whole error, Dagster's wrapper and the traceback included, is kept for the log.
    assert "DagsterExecutionStepExecutionError" in str(exc) and "Traceback" not in exc.short[1]
