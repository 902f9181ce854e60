"""Words for what a unit detects: formulas over annotation values, scored over all images.

:mod:`~carto_assets.core.words.formula` (the grammar, its tree, parsing and printing),
:mod:`~carto_assets.core.words.scoring` (ranks, AUC and Mann-Whitney p-values of many units
against many terms at once) and :mod:`~carto_assets.core.words.search` (the beam search that
labels every unit, and the pooled activation that labels a cluster). docs/words.md explains
the method. Pure numpy/scipy; no study, store or dagster imports.
"""
