"""Every command the README shows, typed as a user types it (see conftest.py).

The tests run in file order on one session's studies: the first ``carto run`` makes the
database that the Dagster CLI, the disk-full failure and the forced re-run then use.
:func:`test_every_readme_block_is_walked` keeps the README and this tier in step: every command
line of the README is either run here (or in the test named) or listed with the reason it is not.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from readme.walk import (
    BIN,
    CARTO,
    CLASSES,
    REPO,
    run,
    shell_env,
    write_awkward_folder,
    write_study,
)

from carto_assets.study import study_from_dict

# In order, in one worker under pytest-xdist: the tests share the session's first run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme")]

README = (REPO / "README.md").read_text()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order (indented fences included)."""
    blocks = []
    for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.M | re.S):
        indent = len(m.group(1))
        body = "\n".join(line[indent:] for line in m.group(3).splitlines())
        blocks.append((m.group(2), body))
    return blocks


def command_lines(body: str) -> list[str]:
    """A bash block's commands, comments cut off."""
    out = []
    for line in body.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            out.append(command)
    return out


# ---- carto check / carto run on the image folder ----------------------------------------------
def test_check_and_run_on_an_image_folder(awkward_study, first_run):
    folder, study, holds = awkward_study
    check = run([CARTO, "check", "--study", study.name], cwd=folder).ok()
    assert f"study '{study.stem}' is valid" in check.stdout
    out = first_run.ok().stdout
    # The summary a user reads, in the page header's words.
    assert re.search(r"\[1/3\] images \+ model \+ dictionary for study 'builtin'", out)
    assert "2 shard(s) computed, 0 up to date" in out
    mapped = re.search(
        r"^Mapped: +([\d,]+) images, (\d+) channels \+ (\d+) features in 4 layers", out, re.M
    )
    assert mapped, out
    # The truncated JPEG is in the manifest (its header reads) and fails to decode later.
    assert int(mapped.group(1)) == holds["images"] + holds["truncated"]
    assert int(mapped.group(2)) == 32 + 48 + 64 + 96 and int(mapped.group(3)) == 2 * 96
    quality = re.search(r"^Quality: +(.*)$", out, re.M)
    assert quality and quality.group(1).endswith("(cluster_quality)"), out
    assert re.search(r"LSH pair recall vs exact all-pairs: [\d.]+ \(cluster_quality\)", out)
    skipped = re.search(
        r"^Skipped: +(\d+) file\(s\) that are not readable images"
        r".*?(\d+) image\(s\) that failed to decode",
        out,
        re.M,
    )
    assert skipped, out
    assert (int(skipped.group(1)), int(skipped.group(2))) == (holds["not_images"], 1)
    db = folder / "out" / "builtin.duckdb"
    views = folder / "out" / "builtin_views" / "index.html"
    assert f"Database: {db}" in out and f"Views:    {views}" in out
    log = re.search(r"^Log: +(\S+)$", out, re.M)
    assert log and Path(log.group(1)).is_file()
    con = duckdb.connect(str(db), read_only=True)
    names = con.execute("SELECT DISTINCT label_name FROM images").fetchall()
    assert sorted(n for (n,) in names) == sorted(CLASSES)


@contextmanager
def chromium():
    """Debian's Chromium through playwright (skipped where it is missing, an error in CI)."""
    pages = pytest.importorskip("viz.pages")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not pages.CHROMIUM.exists():
        if os.environ.get("CI"):
            raise RuntimeError("/usr/bin/chromium is missing in CI: `make test` installs it")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(pages.CHROMIUM), args=pages.ARGS)
        try:
            yield browser
        finally:
            browser.close()


def assert_page_opens(html: Path, title: str) -> None:
    """The exported page loads from file:// in Chromium, fetches nothing from a network, logs
    no error, and draws the class names as text (the search box finds them; no markup ran)."""
    from viz.pages import Page

    with chromium() as browser:
        page = Page(browser, html)
        assert page.errors == [] and page.dialogs == []
        assert all(url.startswith(("file:", "data:", "blob:")) for url in page.requests)
        assert page.page.inner_text("#study-title") == title
        assert page.search("<img") == [CLASSES[1]]
        assert page.search("zür") == [CLASSES[2]]
        assert page.search("quoted") == [CLASSES[0]]
        assert page.page.evaluate("window.__xss") is None


def test_the_page_opens_and_draws_class_names_as_text(awkward_study, first_run):
    folder, _, _ = awkward_study
    first_run.ok()
    assert_page_opens(folder / "out" / "builtin_views" / "index.html", "builtin")


# ---- the Dagster CLI on the same study and instance ------------------------------------------
def test_dagster_asset_materialize_lines(awkward_study, first_run):
    folder, study, _ = awkward_study
    first_run.ok()
    html = folder / "out" / "builtin_views" / "index.html"
    before = html.stat().st_mtime_ns
    env = {"CARTO_STUDY": study.name, "DAGSTER_HOME": str(folder / ".dagster")}
    dagster = BIN / "dagster"
    views = run(
        [dagster, "asset", "materialize", "-m", "carto_assets.definitions", "--select", "views"],
        cwd=folder,
        **env,
    ).ok()
    assert "RUN_SUCCESS" in views.output
    assert html.stat().st_mtime_ns > before
    shard = run(
        [
            *(dagster, "asset", "materialize", "-m", "carto_assets.definitions"),
            *("--select", "activations", "--partition", "shard-0001"),
        ],
        cwd=folder,
        **env,
    ).ok()
    assert "RUN_SUCCESS" in shard.output


# ---- a failure names its cause ------------------------------------------------------------------
def _fill(mount: Path, leave: int) -> None:
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with open(mount / "filler", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_is_named_and_the_previous_results_stay(awkward_study, first_run):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder, study, _ = awkward_study
    first_run.ok()
    db = folder / "out" / "builtin.duckdb"
    mount = folder / "small-disk"
    mount.mkdir()
    size = db.stat().st_size
    # Room for the database and one copy of it (what a write makes); _fill takes the rest.
    room = 2 * size + 8 * 2**20
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(mount)], check=True)
    try:
        shutil.copyfile(db, mount / "builtin.duckdb")
        raw = yaml.safe_load(study.read_text())
        small = write_study(
            folder,
            "small",
            {
                **{k: v for k, v in raw.items() if k != "name"},
                "database": "small-disk/builtin.duckdb",
                "data_dir": "out/builtin_files",  # the shards and the model stay reusable
                "views_dir": "out/small-views",
            },
        )
        con = duckdb.connect(str(mount / "builtin.duckdb"), read_only=True)
        before = con.execute("SELECT count(*) FROM example_patches").fetchone()
        con.close()
        # Room for the copies of the small writes (the images asset's tables, `annotation_counts`
        # among them), not for the summaries' patches.
        _fill(mount, leave=size + 4 * 2**20)
        failed = run([CARTO, "run", "--study", small.name], cwd=folder)
        assert failed.returncode == 1, failed.output
        assert "2 of 2 shards up to date" in failed.stdout
        last = failed.stderr.strip().splitlines()[-3:]
        assert re.fullmatch(r"carto: \w+ failed at step \w+", last[0]), last
        assert "No space left on device" in last[1], last
        assert last[2].startswith("carto: details in ") and Path(last[2].split()[-1]).is_file()
        assert "DagsterExecutionStepExecutionError" not in failed.stderr
        # The published snapshot is whole and unchanged; no partial copy is left.
        con = duckdb.connect(str(mount / "builtin.duckdb"), read_only=True)
        assert con.execute("SELECT count(*) FROM example_patches").fetchone() == before
        con.close()
        assert [p.name for p in mount.iterdir() if ".tmp" in p.name] == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_forced_verbose_parallel_rerun_with_carto_study(awkward_study, first_run):
    folder, study, _ = awkward_study
    first_run.ok()
    again = run([CARTO, "run", "--force", "-v", "--jobs", "2"], cwd=folder, CARTO_STUDY=study.name)
    again.ok()
    assert "2 shard(s) computed, 0 up to date" in again.stdout
    assert "in up to 2 processes" in again.stdout
    # -v: Dagster's event log on the terminal too.
    assert "STEP_SUCCESS" in again.stderr
    con = duckdb.connect(str(folder / "out" / "builtin.duckdb"), read_only=True)
    per = con.execute("SELECT count(*), count(DISTINCT neuron_id) FROM top_images").fetchone()
    assert per[0] == 3 * per[1]  # re-running replaced the rows: top_k each, no duplicates


# ---- the README's own study: a torchvision model, through CARTO_STUDY and make demo -------------
#: What of the README's study cannot run here as written, and what runs instead.
README_STUDY_CHANGES = {
    # resnet50's 3,584 channels and 6,144 features on a handful of images took 273 s here
    # (co-occurrence and clustering of ~10k units whose top images all overlap): resnet18 has
    # the same layer names and a quarter of the units.
    "model": "torchvision:resnet18",
    # No download here: a local checkpoint of the same architecture (weights: a path).
    "weights": "weights/resnet18.pt",
    # 224 px, 100 top images and 240 SAE epochs are minutes on 2 CPU cores: the same stages
    # on a smaller input and budget.
    "dataset.image_size": 64,
    "top_k": 3,
    "shards": 2,
    "batch_size": 8,
    "loader_workers": 2,
    "features.samples": 500,
    "features.sample_images": 16,
    "features.epochs": 2,
    "features.batch_size": 256,
    "embedding": {"epochs": 2},
    "graph": {"images_per_class": 3, "faithfulness_edges": 4},
}


@pytest.fixture(scope="module")
def readme_study(awkward_study) -> Path:
    """The README's ``my_study.yaml``, read from the README, on a generated folder at its
    ``dataset.path``, with :data:`README_STUDY_CHANGES` (everything else as written: the layers
    and features, bf16, channels_last, the database path)."""
    folder, _, _ = awkward_study
    (yaml_block,) = [body for lang, body in fenced_blocks(README) if lang == "yaml"]
    raw = yaml.safe_load(yaml_block)
    home = folder / "readme-study"
    write_awkward_folder(home / raw["dataset"]["path"])
    for key, value in README_STUDY_CHANGES.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    (home / "weights").mkdir()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    torch.save(model.state_dict(), home / "weights" / "resnet18.pt")
    path = home / "my_study.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def test_the_readme_study_with_carto_study_and_make_demo(readme_study):
    folder = readme_study.parent
    # make runs in the repository (as a user types `make demo` there): the study by full path.
    env = {"CARTO_STUDY": str(readme_study)}
    check = run([CARTO, "check"], cwd=folder, **env).ok()
    assert "study 'pets' is valid: model torchvision:resnet18" in check.stdout
    demo = run(["make", "-C", REPO, "demo"], cwd=folder, **env).ok()
    mapped = r"^Mapped: +\d+ images, 896 channels \+ 1,536 features in 3 layers"
    assert re.search(mapped, demo.stdout, re.M), demo.stdout
    assert f"Database: {folder / 'out' / 'pets.duckdb'}" in demo.stdout
    assert_page_opens(folder / "out" / "pets_views" / "index.html", "pets")


def test_carto_layers(awkward_study):
    folder, _, _ = awkward_study
    layers = run([CARTO, "layers", "torchvision:googlenet"], cwd=folder).ok().stdout
    listed = {line.split()[0]: line for line in layers.splitlines()[1:] if line.strip()}
    assert all(listed[f"inception{b}"].rstrip().endswith("*") for b in ("3a", "4e", "5b"))
    assert "9 layers) at 224x224 input" in layers
    builtin = run([CARTO, "layers", "builtin", "--input-size", "32"], cwd=folder).ok().stdout
    assert re.search(r"^block4 +Sequential +96 +96x2x2 +\*", builtin, re.M), builtin
    bad = run([CARTO, "layers", "torchvision:resnet181"], cwd=folder)
    assert (
        bad.returncode == 2 and bad.stderr.startswith("carto: ") and "Traceback" not in bad.stderr
    )


# ---- the Dagster UI -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_ui_serves_the_asset_graph(awkward_study):
    folder, study, _ = awkward_study
    port = _free_port()
    proc = subprocess.Popen(
        ["make", "-C", str(REPO), "ui", f"UI_PORT={port}"],
        cwd=folder,
        env=shell_env(CARTO_STUDY=str(study)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    query = b'{"query": "{ assetNodes { assetKey { path } } }"}'
    try:
        deadline, answer = time.time() + 240, None
        while time.time() < deadline and proc.poll() is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=query,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = yaml.safe_load(response.read())
                if answer.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert answer and answer["data"]["assetNodes"], (proc.poll(), answer)
        keys = {"/".join(n["assetKey"]["path"]) for n in answer["data"]["assetNodes"]}
        assert {"images", "activations", "concept_graph", "views"} <= keys
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


# ---- the README's own text ----------------------------------------------------------------------
def test_readme_sql_runs_on_a_demo_like_database(materialized):
    study, _, _ = materialized
    con = duckdb.connect(str(study.database_path), read_only=True)
    statements = [
        s.strip()
        for lang, body in fenced_blocks(README)
        if lang == "sql"
        for s in body.split(";")
        if re.sub(r"--.*", "", s).strip()
    ]
    assert len(statements) >= 3
    for sql in statements:
        rows = con.execute(sql).fetchall()
        assert rows, f"no rows on the tiny shapes study:\n{sql}"


def test_readme_study_example_is_a_valid_study(tmp_path):
    (yaml_block,) = [body for lang, body in fenced_blocks(README) if lang == "yaml"]
    raw = yaml.safe_load(yaml_block)
    (tmp_path / raw["dataset"]["path"]).mkdir(parents=True)
    study = study_from_dict(raw, base_dir=tmp_path)
    assert study.features is not None and set(study.features.layers) <= set(study.layers)


def test_readme_check_errors_are_what_carto_check_prints(tmp_path):
    (sample,) = [b for lang, b in fenced_blocks(README) if lang == "text" and "broken.yaml" in b]
    expected = [line for line in sample.splitlines() if line.startswith("carto: ")]
    study = write_study(
        tmp_path,
        "broken",
        {
            "model": "torchvision:resnet18",
            "layers": ["layer2", "layer9"],
            "dataset": "digits",
            "top_k": 2000,
        },
    )
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    printed = [line for line in out.stderr.splitlines() if not line.startswith("carto: details")]
    assert printed == expected


def test_readme_sample_output_names_what_carto_run_prints(first_run):
    (sample,) = [b for lang, b in fenced_blocks(README) if lang == "text" and "Done in" in b]
    out = first_run.ok().stdout
    for line in sample.splitlines():
        if not line or line.startswith(" "):
            continue  # progress lines: timings and counts differ
        prefix = re.split(r"[\d]", line, maxsplit=1)[0].rstrip()
        prefix = prefix.split("/home/me", 1)[0].split(" for study", 1)[0]
        assert prefix in out, f"README shows {line!r}; carto run prints no {prefix!r}"


#: README command lines run by this tier (or elsewhere): line -> the test that runs it.
WALKED = {
    "make demo": "test_the_readme_study_with_carto_study_and_make_demo",
    "make ui": "test_make_ui_serves_the_asset_graph",
    "CARTO_STUDY=my_study.yaml .venv/bin/carto run": (
        "test_forced_verbose_parallel_rerun_with_carto_study"
    ),
    "CARTO_STUDY=my_study.yaml make ui": "test_make_ui_serves_the_asset_graph",
    ".venv/bin/carto check --study my_study.yaml": "test_check_and_run_on_an_image_folder",
    ".venv/bin/carto layers torchvision:googlenet": "test_carto_layers",
    ".venv/bin/carto run --study my_study.yaml --jobs 4": (
        "test_forced_verbose_parallel_rerun_with_carto_study"
    ),
    "CARTO_STUDY=my_study.yaml DAGSTER_HOME=$PWD/.dagster .venv/bin/dagster asset materialize "
    "-m carto_assets.definitions --select views": "test_dagster_asset_materialize_lines",
    "CARTO_STUDY=my_study.yaml DAGSTER_HOME=$PWD/.dagster .venv/bin/dagster asset materialize "
    "-m carto_assets.definitions --select activations --partition shard-0001": (
        "test_dagster_asset_materialize_lines"
    ),
    "make lint": "test_make_lint",
    ".venv/bin/carto audit --study my_study.yaml": "test_audit_on_the_image_folder_study",
    ".venv/bin/carto explain path/to/image.png --study my_study.yaml --html explain.html": (
        "test_explain_writes_a_page_that_draws_text_as_text"
    ),
}
#: README command lines not run by the tests, and why.
NOT_RUN = {
    "make test": "it is the command that runs these tests",
    "make test-fast": "it runs a subset of the tests `make test` runs",
    "python -m carto_assets.schema docs/schema.md": (
        "it rewrites docs/schema.md; tests/test_schema.py checks the file is what it would write"
    ),
    ".venv/bin/python benchmarks/activations.py": "a benchmark: minutes, prints measurements",
    ".venv/bin/python benchmarks/clustering.py": "a benchmark: minutes, prints measurements",
    ".venv/bin/python benchmarks/cluster_growth.py": (
        "a benchmark: maps the shapes world at 4,000 and 40,000 images, minutes"
    ),
    ".venv/bin/python benchmarks/embedding.py": "a benchmark that needs gensim (.[bench])",
    ".venv/bin/python benchmarks/features.py": "a benchmark: maps the demo study, minutes",
    ".venv/bin/python benchmarks/gpu.py": (
        "a benchmark for a GPU machine; its JPEG folder is typed on a CPU in "
        "tests/test_gpu_benchmark.py"
    ),
    ".venv/bin/python benchmarks/views.py": "a benchmark at the paper's scale, minutes",
    ".venv/bin/python benchmarks/patches.py --study STUDY.yaml": (
        "a benchmark: re-cuts a mapped study's patches; typed in tests/test_patches_benchmark.py"
    ),
    ".venv/bin/python benchmarks/graph.py": "a benchmark: reads a mapped study's figures",
    ".venv/bin/python benchmarks/explain.py": "a benchmark: maps the demo and digits, minutes",
    ".venv/bin/python benchmarks/paper_scale.py": "a benchmark: googlenet on 200 images, minutes",
    ".venv/bin/python benchmarks/publish.py": "a benchmark: maps a study twice, minutes",
    ".venv/bin/python benchmarks/paper_data_scale.py": (
        "a benchmark: carto run at 4,000 and 40,000 images, an hour on 2 cores; its own logic "
        "is tested in tests/test_paper_data_scale.py"
    ),
    # Comparing models (issue 23); `carto compare` is typed in tests/compare/.
    ".venv/bin/python benchmarks/compare.py": "a benchmark: maps five demo-size studies, minutes",
    ".venv/bin/python benchmarks/repeated_work.py": "a benchmark: maps a small study, a minute",
    ".venv/bin/python benchmarks/words.py": (
        "a benchmark: reads a mapped study (the demo's database in ./data), half a minute"
    ),
    ".venv/bin/python benchmarks/audit.py": (
        "a benchmark: maps six demo-size studies (planted shortcuts, share sweep), half an hour"
    ),
    ".venv/bin/python benchmarks/same_tables.py a.duckdb b.duckdb": (
        "a comparison of two mapped studies' databases (a refactor's before and after)"
    ),
    "make compare-demo": (
        "maps the demo study twice (final, epoch 1), minutes; its commands are typed in "
        "tests/compare/ (carto compare) and here (carto run), its files checked in "
        "tests/compare/test_cli.py"
    ),
    ".venv/bin/carto compare my_comparison.yaml": (
        "typed in tests/compare/test_integration.py (real studies, -v, --dagster-home) and "
        "tests/compare/test_cli.py (the refusals)"
    ),
}


def test_make_lint():
    out = run(["make", "-C", REPO, "lint"], cwd=REPO).ok()
    assert "All checks passed" in out.output


def test_every_readme_block_is_walked():
    lines = [
        line
        for lang, body in fenced_blocks(README)
        if lang in ("bash", "sh", "shell")
        for line in command_lines(body)
    ]
    assert lines, "the README shows no command"
    unaccounted = [line for line in lines if line not in WALKED and line not in NOT_RUN]
    assert unaccounted == [], "README commands neither run by a test nor listed in NOT_RUN"
    gone = sorted((WALKED.keys() | NOT_RUN.keys()) - set(lines))
    assert gone == [], "listed commands the README no longer shows"
    missing = sorted({t for t in WALKED.values() if t not in globals()})
    assert missing == [], "WALKED names tests that do not exist"
    languages = {lang for lang, _ in fenced_blocks(README)}
    # sql, yaml and the text samples have their own tests above; a new kind needs one too.
    assert languages <= {"bash", "sql", "yaml", "text", "python", ""}, languages


# ---- carto explain IMAGE [--html OUT] on the image-folder study (issue 22) -------------------
@pytest.fixture(scope="module")
def picture(awkward_study, tmp_path_factory):
    """A 32 x 32 PNG cut from one of the folder's images (the study's input size)."""
    folder, _, _ = awkward_study
    source = sorted((folder / "images" / CLASSES[2]).glob("*.png"))[0]
    path = tmp_path_factory.mktemp("explain") / "mine.png"
    with Image.open(source) as img:
        img.convert("RGB").resize((32, 32)).save(path)
    return path


def test_explain_prints_the_prediction_and_each_layers_concepts(awkward_study, first_run, picture):
    folder, study, _ = awkward_study
    first_run.ok()
    out = run([CARTO, "explain", picture, "--study", study.name, "--top", "2"], cwd=folder).ok()
    lines = out.stdout.splitlines()
    head = re.match(
        rf"^{re.escape(str(picture))}: (.+) \(logit (-?[\d.]+), probability ([\d.]+)\)$", lines[0]
    )
    assert head and head.group(1) in CLASSES, out.stdout
    layers = [line for line in lines if re.match(r"^  \S+: relevance -?[\d.]+ of the logit", line)]
    # The builtin model's four blocks and block4's dictionary features, each with 2 concepts.
    assert [line.split(":")[0].strip() for line in layers[:4]] == [
        "block1",
        "block2",
        "block3",
        "block4",
    ]
    assert len(layers) == 5
    concepts = [line for line in lines if re.match(r"^    [+-]\d+%  cluster \d+ ", line)]
    assert len(concepts) == 2 * len(layers)


def test_explain_writes_a_page_that_draws_text_as_text(awkward_study, first_run, picture):
    folder, study, _ = awkward_study
    first_run.ok()
    html = folder / "out" / "explain" / "mine.html"
    out = run([CARTO, "explain", picture, "--study", study.name, "--html", html], cwd=folder).ok()
    assert f"Page:     {html}" in out.stdout and html.is_file()
    text = html.read_text()
    assert "<script>window" not in text and '<img src=x onerror="' not in text
    with chromium() as browser:
        page = browser.new_page()
        errors, requests = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.resolve().as_uri())
        page.wait_for_selector("body[data-ready]", timeout=20_000)
        title = page.inner_text("#title")
        assert title.startswith("mine.png: ") and title.split(": ", 1)[1] in CLASSES
        assert page.query_selector("#title img, #title b") is None  # the name stayed text
        assert len(page.query_selector_all("#legend li")) == 3
        assert len(page.query_selector_all("#layers tr")) == 5
        assert errors == [] and page.evaluate("window.__xss") is None
        assert all(u.startswith(("file:", "data:")) for u in requests)


def test_explain_names_what_is_wrong_in_one_line(awkward_study, first_run, picture, tmp_path):
    folder, study, _ = awkward_study
    first_run.ok()
    bigger = tmp_path / "big.png"
    Image.new("RGB", (48, 40)).save(bigger)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    cases = {
        "missing": (
            [CARTO, "explain", tmp_path / "none.png", "--study", study.name],
            "no such file",
        ),
        "broken": ([CARTO, "explain", broken, "--study", study.name], "not an image PIL can read"),
        "size": (
            [CARTO, "explain", bigger, "--study", study.name],
            "is 48x40 px; the study's model takes 32x32 images",
        ),
        "layer": (
            [CARTO, "explain", picture, "--study", study.name, "--layer", "nope"],
            "--layer 'nope' is not a mapped layer",
        ),
    }
    for name, (args, message) in cases.items():
        out = run(args, cwd=folder)
        assert out.returncode == 2, (name, out.output)
        errors = out.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("carto: ") and message in errors[0], (
            name,
            out.stderr,
        )
    # A study that was never run: its database is not there.
    fresh = write_study(
        tmp_path,
        "fresh",
        {"dataset": {"kind": "shapes", "size": 80, "image_size": 32}, "database": "fresh.duckdb"},
    )
    out = run([CARTO, "explain", picture, "--study", fresh], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"carto: study 'fresh' has not been run (no database at {tmp_path / 'fresh.duckdb'}); "
        "run `carto run` first"
    )


# ---- carto audit [--class NAME] on the image-folder study (issue 29) -------------------------
def test_audit_on_the_image_folder_study(awkward_study, first_run, tmp_path):
    folder, study, _ = awkward_study
    first_run.ok()
    out = run([CARTO, "audit", "--study", study.name], cwd=folder).ok()
    database = duckdb.connect(str(folder / "out" / "builtin.duckdb"), read_only=True)
    flagged = database.execute(
        "SELECT DISTINCT class_name FROM class_audit WHERE flagged ORDER BY 1"
    ).fetchall()
    terms = database.execute("SELECT count(*), count(DISTINCT label) FROM class_audit").fetchone()
    database.close()
    assert terms[0] > 0 and terms[1] == len(CLASSES)
    if flagged:  # each flagged class gets its block
        for (name,) in flagged:
            assert re.search(rf"^{re.escape(name)}: relies on ", out.stdout, re.M), out.stdout
    else:
        assert out.stdout.strip().startswith("No shortcut flagged (3 classes audited)"), out.stdout
        assert len(out.stdout.strip().splitlines()) == 1
    # One class; the class's name comes from the folder (awkward characters included).
    one = run([CARTO, "audit", "--study", study.name, "--class", CLASSES[1]], cwd=folder).ok()
    assert f"class {CLASSES[1]}" in one.stdout or f"{CLASSES[1]}: relies on" in one.stdout
    bad = run([CARTO, "audit", "--study", study.name, "--class", "nope"], cwd=folder)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("carto: --class 'nope' is not a class of the study (classes: ")
    fresh = write_study(
        tmp_path,
        "fresh",
        {"dataset": {"kind": "shapes", "size": 80, "image_size": 32}, "database": "fresh.duckdb"},
    )
    never = run([CARTO, "audit", "--study", fresh], cwd=tmp_path)
    assert never.returncode == 2
    (line,) = never.stderr.strip().splitlines()
    assert "no database at" in line and "run `carto run` first" in line
