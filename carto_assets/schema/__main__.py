"""``python -m carto_assets.schema docs/schema.md``: regenerate a document's column tables."""

import sys
from pathlib import Path

from carto_assets.schema import render_doc

for path in map(Path, sys.argv[1:]):
    path.write_text(render_doc(path.read_text()))
    print(f"regenerated the column tables of {path}")
