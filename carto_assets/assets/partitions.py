"""Partitions: activation shards and concept-graph class chunks are dynamic, registered by the
``images`` asset.

Shard keys are ``shard-0000``, ``shard-0001``, ...; the ``images`` asset adds the study's shards
and removes keys left over from an earlier, larger study.
"""

import dagster as dg

SHARDS = dg.DynamicPartitionsDefinition(name="shards")

#: Class chunks of the concept graph (``classes-0000``, ...), also registered by ``images``:
#: ``graph.classes_per_chunk`` consecutive class labels per key.
CLASS_CHUNKS = dg.DynamicPartitionsDefinition(name="class_chunks")
