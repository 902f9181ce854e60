"""The ``class_importance`` asset: how much each neuron matters to each class."""

import dagster as dg

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.stages.class_importance import CLASS_IMPORTANCE_SELECT


@dg.asset(group_name="graph", kinds={"duckdb"}, deps=["top_images"])
def class_importance(study: StudyResource) -> dg.MaterializeResult:
    """Per class and neuron, the share of the class's images the neuron carries (Summit's rule)."""
    store = study.prepare().store
    store.replace_tables({"class_importance": CLASS_IMPORTANCE_SELECT})
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
