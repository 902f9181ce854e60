"""What carto run shows: one line (or bar) per stage; the event log goes to the log file."""

import io
import logging

from carto_assets.runtime.console import EVENTS_LOGGER, StageBars, log_to_file, time_left


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


def test_a_long_stage_off_a_terminal_says_how_far_it_is_and_the_time_left():
    out, now = io.StringIO(), [0.0]
    bars = StageBars(stream=out, bars=False, clock=lambda: now[0], every=60)
    for done in range(0, 1001, 100):  # 100 images every 30 s: 1,000 images in 300 s
        now[0] = done * 0.3
        bars("activations", done, 1000, "images")
    lines = out.getvalue().splitlines()
    # Every 60 s: at 200 images (60 s, 240 s left), 400, 600, 800; then the closing line.
    assert lines[:4] == [
        "  activations: 200/1000 images, about 4 min left",
        "  activations: 400/1000 images, about 3 min left",
        "  activations: 600/1000 images, about 2 min left",
        "  activations: 800/1000 images, about 60 s left",
    ]
    assert lines[4].startswith("  activations: 1000 images in 300.0 s, 3 images/s")
    assert len(lines) == 5


def test_time_left_in_seconds_minutes_and_hours():
    assert time_left(0, 10, 5.0) == "" and time_left(10, 10, 5.0) == ""
    assert time_left(1, 2, 30.0) == "about 30 s left"
    assert time_left(1, 11, 60.0) == "about 10 min left"
    assert time_left(1, 1001, 36.0) == "about 10.0 h left"


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


def test_the_log_file_is_written_even_if_its_folder_went_away(tmp_path):
    saved = _event_logger_state()
    events, root = logging.getLogger(EVENTS_LOGGER), logging.getLogger()
    try:
        log_file = tmp_path / "logs" / "run.log"
        handlers = log_to_file(log_file, verbose=False)
        (tmp_path / "logs").rmdir()  # cleared by someone else before the first record
        events.info("first record")
        for h in handlers:
            h.close()
        assert "first record" in log_file.read_text()
    finally:
        handlers_now, root_handlers, level = saved
        events.handlers[:] = handlers_now
        root.handlers[:] = root_handlers
        root.setLevel(level)
