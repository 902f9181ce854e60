"""``python -m carto_assets.cli.main``: the ``carto`` command."""

from carto_assets.cli.main.main import main

raise SystemExit(main())
