"""The Beam build: raw impression logs -> tf.train.Example shards, quarantine, token counts and
day stats in the work folder (see ecdctr.io.layout). pipeline.build runs it top-down:
discovery (which days) -> dofn (the Beam steps) -> stats -> publish."""

from ecdctr.data.log_partitions import SOURCES
from ecdctr.io.layout import built_partitions
from pipelines.build.discovery import SHARD_BYTES, SLICE_BYTES, BuildPlan, Day, find_days
from pipelines.build.pipeline import build, build_days, build_lock, pipeline_runner

__all__ = ["SHARD_BYTES", "SLICE_BYTES", "SOURCES", "BuildPlan", "Day", "build", "build_days",
           "build_lock", "built_partitions", "find_days", "pipeline_runner"]
