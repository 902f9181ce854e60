"""The ``class_importance`` asset: how much each neuron matters to each class."""

import dagster as dg

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.resources import StudyResource

# Summit's activation-matrix score: the share of a class's images for which the neuron is among
# the channels carrying the top mass_fraction of its layer's normalized activation mass. Summed
# from the per-shard statistics the activation pass kept; no second pass over the images.
CLASS_IMPORTANCE_SQL = """
    SELECT s.label::INTEGER AS label, s.neuron_id::BIGINT AS neuron_id,
           (sum(s.top_mass_count) / sum(s.n_images))::DOUBLE AS score,
           sum(s.top_mass_count)::BIGINT AS top_mass_count,
           sum(s.n_images)::BIGINT AS n_images,
           (sum(s.activation_sum) / sum(s.n_images))::DOUBLE AS mean_activation
    FROM activation_class_stats s
    GROUP BY s.label, s.neuron_id
    ORDER BY label, neuron_id
"""


@dg.asset(group_name="graph", kinds={"duckdb"}, deps=["top_images"])
def class_importance(study: StudyResource) -> dg.MaterializeResult:
    """Per class and neuron, the share of the class's images the neuron carries (Summit's rule)."""
    store = study.store()
    store.replace_tables({"class_importance": CLASS_IMPORTANCE_SQL})
    top = store.query(
        "SELECT i.label_name, c.neuron_id, round(c.score, 3) AS score FROM class_importance c "
        "JOIN (SELECT DISTINCT label, label_name FROM images) i USING (label) "
        "QUALIFY row_number() OVER (PARTITION BY c.label ORDER BY c.score DESC, c.neuron_id) = 1 "
        "ORDER BY i.label_name"
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "class_importance"),
            "most_important_neuron_per_class": frame_table(top.head(50)),
        }
    )
