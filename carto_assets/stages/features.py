"""Dictionary features as a second kind of unit beside channels (no dagster).

# ---- CONTRACT STUB (f-graph-features) ------------------------------------------------------
# Only the names the concept graph codes against: ``FEATURE_SUFFIX``, ``FeatureLayer`` and
# ``feature_layers``. The dictionary stage (branch f-features) owns this module and replaces
# this file's body with the real one; until then no study maps features.
"""

from __future__ import annotations

from dataclasses import dataclass

from carto_assets.core.dictionary import SparseAutoencoder
from carto_assets.study import Study

#: Suffix of a feature pseudo-layer's name: ``"block3:features"`` holds the features of block3.
FEATURE_SUFFIX = ":features"


@dataclass(frozen=True)
class FeatureLayer:
    """The features of one layer, as a pseudo-layer of ``neurons`` (``kind = 'feature'``)."""

    #: ``"block3:features"``: the pseudo-layer's name in ``neurons.layer``
    name: str
    #: ``"block3"``: the module whose output the SAE reads
    source: str
    #: the trained sparse autoencoder
    sae: SparseAutoencoder


def feature_layers(study: Study) -> list[FeatureLayer]:
    """The study's feature layers in forward order of their sources; [] when it maps none."""
    return []
