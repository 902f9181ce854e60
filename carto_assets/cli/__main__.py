"""``python -m carto_assets.cli``: the ``carto`` command."""

from carto_assets.cli.main import main

raise SystemExit(main())
