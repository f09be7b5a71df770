"""Distributed training with tf.distribute: the run config's `distribute:` section, the cluster
TF_CONFIG describes, and the strategy, input sharding and backups every fit runs with."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
import tf_keras as keras

from ecdctr.io import storage

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multi_worker_mirrored", "parameter_server")
BATCH_SIZES = ("global", "per_replica")
DISTRIBUTE_KEYS = ("strategy", "batch_size", "backup", "max_shards", "min_shard_bytes",
                   "wait_seconds")
TASK_TYPES = ("chief", "worker", "ps", "evaluator")

# (rows per batch, parts each batch is cut into, the parts this pipeline yields) -> batches;
# make_dataset with shard=(parts, indices)
DatasetFn = Callable[[int, int, tuple[int, ...]], tf.data.Dataset]


@dataclass(frozen=True)
class DistributeConfig:
    """The run config's `distribute:` section.

    strategy: none (one process, the default) | mirrored (the devices of one machine) |
    multi_worker_mirrored (synchronous, every worker holds all variables) | parameter_server
    (the chief coordinates, workers compute, `ps` tasks hold the variables, large ones
    partitioned). The cluster comes from TF_CONFIG; every task runs the same command.
    batch_size: what the models' `batch_size` means: the global batch of one step, split over
    the replicas (global), or each replica's batch (per_replica: global = it x replicas).
    backup: BackupAndRestore folder (default <work>/backup); a fit backs up to
    <backup>/<date>/<step>/ after every epoch and deletes it when it ends.
    max_shards: parameter_server: the most shards a variable is cut into (0: one per ps task).
    min_shard_bytes: parameter_server: no shard smaller than this (small variables stay whole).
    wait_seconds: how long a worker waits for the chief's build or saved model.
    """

    strategy: str = "none"
    batch_size: str = "global"
    backup: str = ""
    max_shards: int = 0
    min_shard_bytes: int = 256 << 10
    wait_seconds: int = 3600

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"distribute.strategy {self.strategy!r} is not one of "
                             f"{list(STRATEGIES)}")
        if self.batch_size not in BATCH_SIZES:
            raise ValueError(f"distribute.batch_size {self.batch_size!r} is not one of "
                             f"{list(BATCH_SIZES)}")


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster: TF_CONFIG's task and cluster (empty: no cluster)."""

    type: str = ""
    index: int = 0
    cluster: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        """The chief builds, saves, exports, publishes and reports: task `chief`, or worker 0
        when the cluster has no chief (or there is no cluster)."""
        if not self.type:
            return True
        return self.type == "chief" or (self.type == "worker" and self.index == 0
                                        and "chief" not in self.cluster)

    @property
    def workers(self) -> int:
        return len(self.cluster.get("worker", ()))

    def __str__(self) -> str:
        return f"{self.type}:{self.index}" if self.type else "single process"


def read_task(strategy: str, environ: Mapping[str, str] | None = None) -> Task:
    """The task TF_CONFIG names, checked against the strategy; ValueError says what to fix."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        if strategy in ("multi_worker_mirrored", "parameter_server"):
            raise ValueError(f"distribute.strategy {strategy} needs the cluster in TF_CONFIG, "
                             f"which is not set. Fix: set it in every task, e.g. {example} "
                             f"(Kubernetes and Vertex AI set it), or use strategy none.")
        return Task()
    try:
        body = json.loads(raw)
        cluster = {str(k): tuple(str(a) for a in v) for k, v in body["cluster"].items()}
        task = body["task"]
        task_type, index = str(task["type"]), task["index"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a cluster description ({type(e).__name__}: {e}). "
                         f"Fix: JSON with 'cluster' (job name -> list of host:port) and 'task' "
                         f"(type, index), e.g. {example}.") from None
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise ValueError(f"TF_CONFIG cluster has unknown job(s) {unknown}. Fix: use "
                         f"{list(TASK_TYPES)}.")
    if task_type not in cluster or not isinstance(index, int) or not \
            0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type}:{index} is not in its cluster "
                         f"{ {k: len(v) for k, v in cluster.items()} }. Fix: give each task its "
                         f"own type and index within the cluster.")
    tasks = sum(len(v) for v in cluster.values())
    if strategy in ("none", "mirrored") and tasks > 1:
        raise ValueError(f"TF_CONFIG describes a cluster of {tasks} tasks but "
                         f"distribute.strategy is {strategy}, which trains in one process. Fix: "
                         f"set distribute.strategy to multi_worker_mirrored or parameter_server, "
                         f"or unset TF_CONFIG.")
    if strategy == "multi_worker_mirrored" and ("ps" in cluster or "worker" not in cluster
                                               or len(cluster.get("chief", ())) > 1):
        raise ValueError(f"TF_CONFIG cluster {sorted(cluster)} does not fit "
                         f"multi_worker_mirrored: it needs 'worker' tasks (and at most one "
                         f"'chief'), no 'ps'. Fix: remove the ps tasks, or use parameter_server.")
    if strategy == "parameter_server" and (len(cluster.get("chief", ())) != 1
                                           or "worker" not in cluster or "ps" not in cluster):
        raise ValueError(f"TF_CONFIG cluster {sorted(cluster)} does not fit parameter_server: "
                         f"it needs one 'chief' (the coordinator), 'worker' and 'ps' tasks. Fix: "
                         f"add them, or use multi_worker_mirrored.")
    return Task(task_type, index, cluster)


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


class Distribution:
    """A strategy and how fits use it: the global batch, per-worker input, backups, and which
    process does what. Create it once, before TensorFlow runs anything (`create`)."""

    def __init__(self, config: DistributeConfig, task: Task, strategy: tf.distribute.Strategy,
                 backup: str):
        self.config, self.task, self.strategy, self.backup = config, task, strategy, backup

    @property
    def is_chief(self) -> bool:
        return self.task.is_chief

    @property
    def runs_pipeline(self) -> bool:
        """False for the tasks that only serve the coordinator: `ps`, and parameter_server
        workers."""
        return not (self.task.type == "ps" or (self.config.strategy == "parameter_server"
                                                and self.task.type == "worker"))

    @property
    def coordinated(self) -> bool:
        """True with parameter_server: the chief schedules steps on the workers."""
        return self.config.strategy == "parameter_server"

    @property
    def replicas(self) -> int:
        """Replicas a synchronous step spans (parameter_server: workers, each its own step)."""
        if self.coordinated:
            return max(self.task.workers, 1)
        return self.strategy.num_replicas_in_sync

    def global_batch(self, batch_size: int) -> int:
        """The examples one step reads, across replicas, for a model's batch_size."""
        if self.config.batch_size == "per_replica" and not self.coordinated:
            return batch_size * self.replicas
        return batch_size

    def scope(self) -> Any:
        return self.strategy.scope()

    def backup_dir(self, name: str) -> str:
        """The BackupAndRestore folder of one fit."""
        return storage.join(self.backup, name)

    def for_run(self, subfolder: str) -> Distribution:
        """The same distribution with backups under <backup>/<subfolder>."""
        return Distribution(self.config, self.task, self.strategy,
                            storage.join(self.backup, subfolder))

    def input(self, make: DatasetFn, batch_size: int, rows: int) -> tuple[Any, int]:
        """(per-worker input for model.fit, steps of one pass over `rows` rows). Each input
        pipeline reads the rows of its replicas: every global batch of the plain dataset is cut
        into one strided part per replica (see make_dataset), so a synchronous step reads the
        rows one process reads in a step; a last batch too small to give every replica a row is
        left out. parameter_server: each worker reads its own part of batches of batch_size x
        workers, repeated (its workers need endless input)."""
        global_batch = self.global_batch(batch_size)
        if self.coordinated:
            steps = max(1, math.ceil(rows / global_batch))

            def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
                pipelines = context.num_input_pipelines
                return make(global_batch * pipelines, pipelines,
                            (context.input_pipeline_id,)).repeat()

            return keras.utils.experimental.DatasetCreator(per_worker), steps
        replicas = self.replicas
        if global_batch % replicas:
            raise ValueError(f"the global batch {global_batch} does not split over {replicas} "
                             f"replicas. Fix: make the models' batch_size a multiple of "
                             f"{replicas}, or set distribute.batch_size: per_replica.")
        steps = rows // global_batch + (1 if rows % global_batch >= replicas else 0)
        if steps == 0:
            raise ValueError(f"{rows} rows do not give each of {replicas} replicas one row")

        def per_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local
            return make(global_batch, replicas, tuple(range(first, first + local))
                        ).take(steps * local).repeat()

        return self.strategy.distribute_datasets_from_function(per_pipeline), steps

    def describe(self) -> str:
        return (f"{self.config.strategy} as {self.task}, {self.replicas} replica(s)"
                + (f", cluster {dict((k, len(v)) for k, v in self.task.cluster.items())}"
                   if self.task.cluster else ""))


def create(config: DistributeConfig, work: str,
           environ: Mapping[str, str] | None = None) -> Distribution | None:
    """The distribution of this process, or None for strategy none (plain single-process
    training). The strategy is created once per process: multi_worker_mirrored must be made
    before TensorFlow runs any op, so call this first thing."""
    if config.strategy == "none":
        read_task("none", environ)  # a cluster with strategy none is a mistake: say so
        return None
    task = read_task(config.strategy, environ)
    backup = config.backup or storage.join(work, "backup")
    strategy = _STRATEGIES.get(config.strategy)
    if strategy is None:
        strategy = _STRATEGIES[config.strategy] = _strategy(config, task)
    distribution = Distribution(config, task, strategy, backup)
    logger.info(f"distributed training: {distribution.describe()}")
    return distribution


HEARTBEAT_SECONDS = 30  # a peer silent this long is dead (TensorFlow's default, 10 s, also
# fails a run whose worker is merely starved of CPU for a while)


def _coordination_service(heartbeat_seconds: int) -> None:
    """What MultiWorkerMirroredStrategy sets up itself when nothing is configured (TF 2.17,
    collective_all_reduce_strategy.py), with a longer heartbeat timeout."""
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    from tensorflow.tsl.protobuf import coordination_config_pb2

    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    if context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=heartbeat_seconds * 1000)


def _strategy(config: DistributeConfig, task: Task) -> tf.distribute.Strategy:
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker_mirrored":
        _coordination_service(HEARTBEAT_SECONDS)
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if task.type in ("worker", "ps"):
        return tf.distribute.get_strategy()  # these tasks serve(); they build no model
    shards = config.max_shards or len(task.cluster["ps"])
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=config.min_shard_bytes, max_shards=shards)
    return tf.distribute.experimental.ParameterServerStrategy(resolver,
                                                              variable_partitioner=partitioner)


def serve(distribution: Distribution) -> None:
    """What a parameter_server `worker` or `ps` task does: serve the chief until killed (the
    job's controller ends these tasks once the chief is done)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # A worker that cannot reach a peer reports it to the coordinator, which retries elsewhere.
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    logger.info(f"{distribution.task}: serving the parameter_server cluster until stopped")
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    server.join()


def _weights(model: keras.Model) -> dict[str, list[tf.Variable]]:
    """{name without the model's: its variables}: one, or the shards of a partitioned one in
    order (parameter_server lists `<name>/part_<k>`)."""
    prefix = model.name + "/"
    found: dict[str, dict[int, tf.Variable]] = {}
    for v in model.variables:
        name = v.name.split(":")[0]
        name = name[len(prefix):] if name.startswith(prefix) else name
        part = _PART.match(name)
        name, k = (part.group(1), int(part.group(2))) if part else (name, 0)
        found.setdefault(name, {})[k] = v
    return {name: [parts[k] for k in sorted(parts)] for name, parts in found.items()}


_PART = re.compile(r"^(.*)/part_(\d+)$")


def sharded_variables(model: keras.Model) -> dict[str, int]:
    """{name: shards} of the model's variables that are partitioned (parameter_server)."""
    return {name: len(parts) for name, parts in _weights(model).items() if len(parts) > 1}


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copies every variable of source into the same-named one of target (two builds of one
    model: a plain one and its replica under a strategy, either way). A partitioned variable
    is read whole (its shards concatenated) and written back in its shards."""
    sources, targets = _weights(source), _weights(target)
    if sorted(sources) != sorted(targets):
        differ = sorted(set(sources) ^ set(targets))
        raise ValueError(f"{source.name} and {target.name} do not have the same variables: "
                         f"{differ[:5]} differ")
    for name, parts in targets.items():
        read = [tf.convert_to_tensor(v) for v in sources[name]]
        value = read[0] if len(read) == 1 else tf.concat(read, axis=0)
        if len(parts) == 1:
            parts[0].assign(value)
            continue
        for part, piece in zip(parts, tf.split(value, [int(p.shape[0]) for p in parts]),
                               strict=True):
            part.assign(piece)
