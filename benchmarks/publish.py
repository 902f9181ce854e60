"""What publishing database snapshots costs, side by side with the summaries it belongs to.

Readers never block a run because no write touches the published database: each asset's
write copies the published file, writes the copy and renames it into place (see
``carto_assets/storage/store.py``). That copy, sync and rename is the design's whole cost; it grows
with the database's size, once per write. This runs a study end to end in a temporary folder
and prints the summaries job's time, the part of it spent publishing, and the ratio.

    .venv/bin/python benchmarks/publish.py            # the demo study: 4,000 images, 240 neurons
    .venv/bin/python benchmarks/publish.py --larger   # resnet18, 960 neurons, top_k 100
    .venv/bin/python benchmarks/publish.py --study my_study.yaml   (its database is reused)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

#: A study about 4x the demo's neurons and 2x its top-k: more rows, more patches, bigger file.
LARGER = {
    "name": "publish-larger",
    "model": "torchvision:resnet18",
    "weights": "none",
    "dataset": {"kind": "shapes", "size": 4000, "image_size": 64},
    "layers": ["layer1", "layer2", "layer3", "layer4"],
    "shards": 4,
    "top_k": 100,
    "seed": 0,
    "database": "larger.duckdb",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="a study YAML (default: the demo study in a temp folder)")
    parser.add_argument("--larger", action="store_true", help="the larger built-in study")
    args = parser.parse_args()

    import dagster as dg

    from carto_assets.cli.run import materialize_all
    from carto_assets.study import DEMO_STUDY, load_study

    with tempfile.TemporaryDirectory(prefix="carto-publish-") as tmp:
        if args.study:
            study_file = Path(args.study)
        else:
            raw = dict(LARGER if args.larger else {**DEMO_STUDY, "database": "demo.duckdb"})
            study_file = Path(tmp) / "study.yaml"
            study_file.write_text(yaml.safe_dump(raw))
        t = materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=print)
        size = load_study(study_file).database_path.stat().st_size
        print(
            f"\nstudy {load_study(study_file).name}: database {size / 2**20:.1f} MiB\n"
            f"summaries                {t['summaries']:8.2f} s\n"
            f"  publishing snapshots   {t['publish']:8.2f} s  "
            f"({t['publish_writes']:.0f} writes, {t['publish_bytes'] / 2**20:.0f} MiB copied)\n"
            f"  ratio                  {100 * t['publish'] / t['summaries']:8.2f} %"
        )


if __name__ == "__main__":
    main()
