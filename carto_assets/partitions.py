"""Partitions: activation shards are dynamic, registered by the ``images`` asset.

Shard keys are ``shard-0000``, ``shard-0001``, ...; the ``images`` asset adds the study's shards
and removes keys left over from an earlier, larger study.
"""

import dagster as dg

SHARDS = dg.DynamicPartitionsDefinition(name="shards")
