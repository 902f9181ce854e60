"""Stage functions for the assets after ``top_images`` (no dagster imports)."""
