"""The ``class_importance`` stage: how much each neuron matters to each class, summed from
the activation pass's per-shard class statistics (no dagster)."""

#: ``class_importance``, Summit's activation-matrix score: the share of a class's images for
#: which the neuron is among the channels carrying the top mass_fraction of its layer's
#: normalized activation mass. Summed from the per-shard statistics the activation pass kept;
#: no second pass over the images.
CLASS_IMPORTANCE_SELECT = """
    SELECT s.label::INTEGER AS label, s.neuron_id::BIGINT AS neuron_id,
           (sum(s.top_mass_count) / sum(s.n_images))::DOUBLE AS score,
           sum(s.top_mass_count)::BIGINT AS top_mass_count,
           sum(s.n_images)::BIGINT AS n_images,
           (sum(s.activation_sum) / sum(s.n_images))::DOUBLE AS mean_activation
    FROM activation_class_stats s
    GROUP BY s.label, s.neuron_id
    ORDER BY label, neuron_id
"""
