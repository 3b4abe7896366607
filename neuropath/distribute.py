"""Where and how training runs: distribution strategy, precision and batch rules.

A *strategy* is the ``tf.distribute`` engine that trains one copy of the model,
a *replica*, per device and keeps the copies in step. The *per-replica batch* is
``train.batch_size``; the *global batch* of one step is that times the number
of replicas. In a multi-worker run the *chief* (worker 0) writes the run folder;
the other workers write theirs to a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from neuropath.config import (
    JIT_COMPILE_VALUES,
    LEARNING_RATE_SCALING,
    PRECISION_POLICIES,
    STRATEGIES,
)

__all__ = [
    "JIT_COMPILE_VALUES",
    "LEARNING_RATE_SCALING",
    "PRECISION_POLICIES",
    "STRATEGIES",
    "global_batch_size",
    "is_chief",
    "make_strategy",
    "precision_policy",
    "read_tf_config",
    "scaled_learning_rate",
    "shareable_batch_size",
    "wait_for_workers",
    "worker_run_dir",
]

logger = logging.getLogger(__name__)

_WORKER_TYPES = ("chief", "worker")


def read_tf_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Reads and checks the ``TF_CONFIG`` environment variable of a worker.

    Args:
        environ: the environment; ``os.environ`` by default.

    Returns:
        The parsed ``TF_CONFIG``: ``{"cluster": {"worker": [...]}, "task":
        {"type": "worker", "index": i}}`` (a ``"chief"`` list is allowed too).

    Raises:
        ValueError: ``TF_CONFIG`` is missing, is not JSON, or its task does not
            name one of the cluster's machines; the message says how to set it.
    """
    environ = os.environ if environ is None else environ
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise ValueError(
            "train.strategy is 'multi_worker' but the TF_CONFIG environment "
            f"variable is not set. Set it on every machine, for example {example} "
            "(index 1 on the second), or use train.strategy=mirrored on one machine."
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({err}); received {raw!r}. Expected for "
            f"example {example}."
        ) from err
    _check_tf_config(config, example)
    return config


def _check_tf_config(config: Any, example: str) -> None:
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(
            "TF_CONFIG needs a 'cluster' mapping and a 'task' mapping; received "
            f"{json.dumps(config)}. Expected for example {example}."
        )
    for kind, addresses in cluster.items():
        if kind not in _WORKER_TYPES or not isinstance(addresses, list):
            raise ValueError(
                f"TF_CONFIG cluster entry {kind!r} must be one of {_WORKER_TYPES} "
                f"with a list of 'host:port' addresses; received {addresses!r}."
            )
        bad = [a for a in addresses if not isinstance(a, str) or ":" not in a]
        if bad or not addresses:
            raise ValueError(
                f"TF_CONFIG cluster entry {kind!r} needs 'host:port' addresses; "
                f"received {addresses!r}."
            )
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {kind!r} is not in the cluster "
            f"{sorted(cluster)}; set task.type to one of them."
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(
            f"TF_CONFIG task index must be an integer; received {index!r}."
        )
    if not 0 <= index < len(cluster[kind]):
        raise ValueError(
            f"TF_CONFIG task index {index} is out of range for the "
            f"{len(cluster[kind])} {kind!r} address(es) of the cluster."
        )


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose ``reduce`` takes what Keras passes.

    Keras' ``fit`` reduces a whole ``(images, labels)`` batch in one call, and
    scalar losses along axis 0; across workers the collective reduction takes a
    single value with that axis. This class reduces element by element and
    reduces scalars across replicas without an axis.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(item):
            local = self.experimental_local_results(item)[0]
            rank = getattr(local, "shape", tf.TensorShape(None)).rank
            return parent.reduce(reduce_op, item, axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)


def _local_devices() -> list[str]:
    """Every local GPU, or else every logical CPU device (one unless split)."""
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy a ``train.strategy`` value names.

    Args:
        name: ``"default"`` (one device, no strategy), ``"mirrored"`` (one
            replica per local GPU, or per logical CPU device without GPUs) or
            ``"multi_worker"`` (one replica per GPU of every machine listed in
            ``TF_CONFIG``). Create it before any other TensorFlow work: a
            multi-worker strategy must configure the runtime first.

    Returns:
        The strategy; build and compile the model inside its ``scope()``.

    Raises:
        ValueError: an unknown name, or a missing or malformed ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown train.strategy {name!r}; expected one of {list(STRATEGIES)}."
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = _local_devices()
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        tf_config = read_tf_config()
        strategy = _MultiWorkerStrategy()
        logger.info(
            "Worker %s:%d of a cluster of %d machine(s)",
            tf_config["task"]["type"],
            tf_config["task"]["index"],
            sum(len(a) for a in tf_config["cluster"].values()),
        )
    logger.info("Strategy %s with %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy) -> int:
    """Images per training step: the per-replica batch times the replicas."""
    return per_replica * strategy.num_replicas_in_sync


def shareable_batch_size(images: int, batch_size: int, replicas: int) -> int | None:
    """The largest batch, at most ``batch_size``, that every replica can share.

    A distributed step splits each batch between the replicas. Keras builds
    the model from the first batch averaged over the replicas, so its shares
    must be equal: a multiple of ``replicas``. A last batch smaller than the
    replica count would leave some with nothing, which TensorFlow's
    convolutions refuse. Used for validation, where every image should be
    seen (training drops its last batch instead).

    Args:
        images: images in the split.
        batch_size: the global batch, a multiple of ``replicas``.
        replicas: replicas in sync.

    Returns:
        A multiple of ``replicas`` whose last batch holds no images or at least
        ``replicas``; ``None`` when there is none (the last batch must then be
        dropped).

    Example:

    >>> shareable_batch_size(17, 16, 2)  # 16 + 1 would leave a replica empty
    14
    """
    for size in range(min(batch_size, images) // replicas * replicas, 0, -replicas):
        if images % size == 0 or images % size >= replicas:
            return size
    return None


def scaled_learning_rate(rate: float, replicas: int, rule: str = "linear") -> float:
    """The learning rate for a global batch ``replicas`` times the configured one.

    Args:
        rate: the configured rate, tuned for one replica's batch.
        replicas: replicas in sync.
        rule: ``"linear"`` multiplies by ``replicas`` (each step averages
            ``replicas`` times more images, so it may move that much further);
            ``"none"`` keeps ``rate``.

    Returns:
        The rate to train with.
    """
    if rule not in LEARNING_RATE_SCALING:
        raise ValueError(
            f"Unknown train.scale_learning_rate {rule!r}; expected one of "
            f"{list(LEARNING_RATE_SCALING)}."
        )
    return rate * replicas if rule == "linear" else rate


@contextlib.contextmanager
def precision_policy(name: str | None) -> Iterator[None]:
    """Sets Keras' global dtype policy for the models built inside, then restores.

    Args:
        name: ``"mixed_float16"``, ``"mixed_bfloat16"`` or ``None`` (float32).
            Under ``mixed_float16`` Keras' ``compile`` wraps the optimizer in a
            ``LossScaleOptimizer``; layers declared float32, such as the
            classifier's softmax, stay float32.
    """
    if name is not None and name not in PRECISION_POLICIES:
        raise ValueError(
            f"Unknown train.mixed_precision {name!r}; expected null or one of "
            f"{list(PRECISION_POLICIES)}."
        )
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder.

    Always true outside multi-worker runs; in one, true for the ``chief`` task,
    or for worker 0 when the cluster lists no chief.
    """
    if not isinstance(strategy, _MultiWorkerStrategy):
        return True
    resolver = strategy.cluster_resolver
    kind, index = resolver.task_type, resolver.task_id
    if kind is None or kind == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().jobs
    return kind == "worker" and index == 0 and not has_chief


def worker_run_dir(
    strategy: tf.distribute.Strategy, run_dir: str | Path | None
) -> str | Path | None:
    """The run folder this process writes: ``run_dir`` on the chief, else a
    new temporary folder, so that workers never write over each other.

    Every worker must still save checkpoints and logs, as the chief does: a
    save may take part in collective operations.
    """
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    folder = tempfile.mkdtemp(
        prefix=f"neuropath-{resolver.task_type}{resolver.task_id}-"
    )
    logger.info("Not the chief worker: writing this worker's files to %s", folder)
    return folder


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker of a multi-worker run has called it.

    The chief hosts the runtime's coordination service: a worker still busy
    when the chief's process exits waits minutes for it before giving up.
    """
    if not isinstance(strategy, _MultiWorkerStrategy):
        return
    strategy.run(
        lambda: tf.distribute.get_replica_context().all_reduce("SUM", tf.constant(1.0))
    )
