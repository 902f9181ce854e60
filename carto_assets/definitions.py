"""The Dagster code location: the only place that wires assets, resources and jobs.

The study comes from the ``CARTO_STUDY`` environment variable (a YAML path); without it the
built-in shapes demo study runs. An invalid study fails here, when the definitions load,
before any work.
"""

from __future__ import annotations

import gc
import os

import dagster as dg

from carto_assets.assets.activations import activations
from carto_assets.assets.class_audit import class_audit
from carto_assets.assets.class_importance import class_importance
from carto_assets.assets.clustering import cluster_quality, minhash_signatures, neuron_clusters
from carto_assets.assets.concept_graph import concept_graph, concept_graph_chunk
from carto_assets.assets.dictionary import dictionary
from carto_assets.assets.embedding import cooccurrence, neuron_embedding, neuron_projection
from carto_assets.assets.events import carto_events
from carto_assets.assets.example_patches import example_patches
from carto_assets.assets.explanations import explanations
from carto_assets.assets.hooks import with_release_memory
from carto_assets.assets.images import images
from carto_assets.assets.model import model
from carto_assets.assets.resources import StudyResource
from carto_assets.assets.top_images import top_images
from carto_assets.assets.unit_labels import unit_labels
from carto_assets.assets.views import views
from carto_assets.runtime.environment import STUDY_ENV_VAR

# The ~600,000 objects of the libraries imported above (dagster, torch, polars, ...) live as long
# as the process: freezing them keeps every garbage collection (release_memory, after each
# asset step) from walking them again: 0.4 s per collection before, 1 ms after, on 2 cores.
gc.freeze()


_ASSETS = [
    images,
    model,
    dictionary,
    activations,
    top_images,
    class_importance,
    minhash_signatures,
    neuron_clusters,
    cluster_quality,
    unit_labels,
    example_patches,
    concept_graph_chunk,
    concept_graph,
    explanations,
    class_audit,
    cooccurrence,
    neuron_embedding,
    neuron_projection,
    views,
]
#: Every asset, each followed by the ``release_memory`` hook wherever it runs (jobs, the UI,
#: ``dg.materialize``).
ALL_ASSETS = with_release_memory(_ASSETS)

PREPARE_JOB = "prepare_study"
ACTIVATIONS_JOB = "activation_pass"
SUMMARIES_JOB = "summaries"
GRAPH_CHUNKS_JOB = "concept_graph_chunks"
PUBLISH_JOB = "graph_and_views"


def build_definitions(study_file: str = "") -> dg.Definitions:
    """Definitions for one study file ('' = built-in demo); validates the study first."""
    resource = StudyResource(study_file=study_file)
    resource.load()  # raises StudyError naming the bad field
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[
            dg.define_asset_job(
                PREPARE_JOB,
                selection=dg.AssetSelection.assets(images, model, dictionary),
                description="Build the image manifest, train or load the model and train the "
                "features' dictionaries.",
            ),
            dg.define_asset_job(
                ACTIVATIONS_JOB,
                selection=dg.AssetSelection.assets(activations),
                description="The activation pass over one shard (one run per partition).",
            ),
            dg.define_asset_job(
                SUMMARIES_JOB,
                selection=dg.AssetSelection.assets(activations).downstream()
                - dg.AssetSelection.assets(activations)
                - dg.AssetSelection.assets(concept_graph_chunk).downstream(),
                description="Everything computed from the per-shard summaries, up to the "
                "concept graph's class chunks.",
            ),
            dg.define_asset_job(
                GRAPH_CHUNKS_JOB,
                selection=dg.AssetSelection.assets(concept_graph_chunk),
                description="The concept graph and the explanations for one chunk of classes "
                "(one run per partition).",
            ),
            dg.define_asset_job(
                PUBLISH_JOB,
                selection=dg.AssetSelection.assets(concept_graph_chunk).downstream()
                - dg.AssetSelection.assets(concept_graph_chunk),
                description="Merge the class chunks into the concept graph and explanation "
                "tables; the views.",
            ),
        ],
        resources={"study": resource},
        # Only runs whose config selects it use it (carto run); others keep Dagster's console.
        loggers={"carto_events": carto_events},
    )


defs = build_definitions(os.environ.get(STUDY_ENV_VAR, ""))
