"""Two-stage training of the classifier into a run folder.

A *run folder* holds everything one training run produced: the resolved
config, the split manifest, class names, checkpoints, the CSV and TensorBoard
logs (with the gradient logs of a fixed *probe batch* under ``logs/gradients``),
the final model and its test-split evaluation. Stage 1 (*frozen*)
trains the head on a frozen backbone; stage 2 (*fine-tune*) unfreezes the top
of the backbone at a lower learning rate. Either stage may be skipped. A run
stopped before its end (killed, pre-empted) continues from its last checkpoint
with ``resume`` (see `neuropath.resume`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml

from neuropath.callbacks import CheckpointSaver, LearningRateInLogs
from neuropath.class_match import check_class_names
from neuropath.classes import CLASS_NAMES
from neuropath.config import RunConfig
from neuropath.data_check import write_unusable_list
from neuropath.dataset import (
    Record,
    class_weights,
    image_problem,
    make_augmentation,
    make_dataset,
    read_manifest,
    scan_dataset,
    split_records,
    write_manifest,
)
from neuropath.distribute import (
    global_batch_size,
    make_strategy,
    precision_policy,
    scaled_learning_rate,
    shareable_batch_size,
    wait_for_workers,
    worker_run_dir,
)
from neuropath.divergence import NonFiniteLossGuard, TrainingDivergedError
from neuropath.duplicates import assign_duplicate_groups
from neuropath.evaluation import evaluate_records
from neuropath.gradient_logging import GradientNormLogger
from neuropath.image_files import display_path
from neuropath.resume import (
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    ResumePoint,
    callback_state,
    load_resume_point,
    restore_checkpoint,
    truncate_event_logs,
    truncate_training_log,
)
from neuropathology_model import NeuropathologyClassifier, read_metadata

__all__ = [
    "TrainingResult",
    "build_classifier",
    "make_pipelines",
    "prepare_run_dir",
    "probe_batch",
    "resume",
    "records_dataset",
    "select_records",
    "train",
]

UNUSABLE_LIST = "unusable_files.csv"
# Class name to its output index, in the canonical order.
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingResult:
    """What `train` produced.

    Attributes:
        run_dir: the run folder.
        model_path: the final model (the best checkpoint by validation loss).
        test_accuracy: accuracy on the test split, or ``None`` without one.
        report: the test-split evaluation report.
        minutes: wall-clock training and evaluation time.
        replicas: model replicas trained in step (devices of all workers).
    """

    run_dir: Path
    model_path: Path
    test_accuracy: float | None
    report: dict | None
    minutes: float
    replicas: int = 1


def build_classifier(config: RunConfig) -> NeuropathologyClassifier:
    """Builds the classifier a config describes."""
    model = config.model
    return NeuropathologyClassifier(
        class_names=CLASS_NAMES,
        backbone=model.backbone,
        weights=model.weights,
        image_size=config.data.image_size,
        dense_units=model.dense_units,
        dropout_rates=model.dropout_rates,
        batchnorm_momentum=model.batchnorm_momentum,
        backbone_options=model.backbone_options,
        test_time_flip=model.test_time_flip,
    )


def prepare_run_dir(config: RunConfig, run_dir: str | Path | None = None) -> Path:
    """Creates the run folder and writes the resolved config and class names.

    Args:
        config: the run's config.
        run_dir: the folder; by default ``<runs_dir>/<name>-<timestamp>``.

    Returns:
        The run folder.
    """
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(config.runs_dir) / f"{config.name}-{stamp}"
    run_dir = Path(run_dir)
    if (run_dir / "model.keras").exists():
        raise FileExistsError(
            f"Run folder {str(run_dir)!r} already holds a finished run; pass "
            "another --run-dir."
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    (run_dir / "class_names.json").write_text(
        json.dumps(list(CLASS_NAMES), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return run_dir


def select_records(config: RunConfig) -> tuple[list[Record], list[tuple[str, str]]]:
    """The split records of a new run, and the files left out.

    Reuses the configured manifest, or scans the data folder, groups its near
    duplicates and splits it anew.

    Args:
        config: the run's config.

    Returns:
        ``(records, unusable)``: the usable records with their split, and
        ``(path, reason)`` for each file left out.

    Raises:
        ValueError: no usable image, or ``data.strict`` and an unusable file.
    """
    data = config.data
    if data.manifest:
        records = read_manifest(data.manifest, CLASS_NAMES)
        logger.info(
            "Reusing split manifest %s (%d images)", data.manifest, len(records)
        )
        unusable = []
        if data.verify_images:
            root = Path(data.data_dir)
            with ThreadPoolExecutor() as pool:
                problems = list(
                    pool.map(image_problem, (root / r.path for r in records))
                )
            unusable = [
                (r.path, p) for r, p in zip(records, problems, strict=True) if p
            ]
            records = [r for r, p in zip(records, problems, strict=True) if not p]
    else:
        scan = scan_dataset(data.data_dir, CLASS_NAMES, verify=data.verify_images)
        unusable = scan.unusable
        records = scan.records
    _refuse_if_strict(config, unusable)
    if not records:
        raise ValueError(
            f"No usable images under {data.data_dir!r}: expected class "
            "folders such as 'NORMAL T1' holding .jpg/.png files."
        )
    if not data.manifest:
        records = assign_duplicate_groups(records, data.data_dir)
        records = split_records(
            records,
            data.val_fraction,
            data.test_fraction,
            data.seed,
            keep_duplicates_together=not data.allow_cross_split_duplicates,
        )
    return records, unusable


def _refuse_if_strict(config: RunConfig, unusable: list[tuple[str, str]]) -> None:
    if not (config.data.strict and unusable):
        return
    path, reason = unusable[0]
    raise ValueError(
        f"{len(unusable)} file(s) under {config.data.data_dir!r} cannot be used "
        f"(first: {display_path(path)}: {reason}), and data.strict (--strict) "
        "refuses to train without them. Run 'neuropath check-data "
        f"{config.data.data_dir}' for the full list, then repair or remove them, "
        "or train without --strict to leave them out."
    )


def _write_split(
    records: list[Record], unusable: list[tuple[str, str]], run_dir: Path
) -> None:
    """Writes the manifest and, with one warning, the list of unusable files."""
    write_manifest(records, run_dir / "split_manifest.csv", CLASS_NAMES)
    if unusable:
        path = write_unusable_list(unusable, run_dir / UNUSABLE_LIST)
        logger.warning(
            "Left out %d unusable file(s); the list with reasons is in %s",
            len(unusable),
            path,
        )
    for split in ("train", "val", "test"):
        logger.info(
            "%s split: %d images", split, sum(r.split == split for r in records)
        )


def records_dataset(
    config: RunConfig, records: Sequence[Record], batch_size: int, **options
) -> tf.data.Dataset:
    """`make_dataset` over split records: their files and class indices.

    Args:
        config: the run's config (data folder and image size).
        records: the records to stream, in order.
        batch_size: images per batch.
        **options: further `make_dataset` arguments (``training``,
            ``augmentation``, ``cache``, ``seed``, ``drop_remainder``).
    """
    return make_dataset(
        [Path(config.data.data_dir) / r.path for r in records],
        [CLASS_INDEX[r.class_name] for r in records],
        len(CLASS_NAMES),
        config.data.image_size,
        batch_size,
        **options,
    )


def make_pipelines(
    config: RunConfig,
    records: list[Record],
    batch_size: int | None = None,
    replicas: int = 1,
):
    """Builds the training and validation pipelines of a split.

    Args:
        config: the run's config (data, augmentation, batch size, seed).
        records: the split records.
        batch_size: images per batch; ``train.batch_size`` by default. Under a
            distribution strategy, the global batch.
        replicas: replicas sharing each batch; with more than one, the last,
            smaller training batch of an epoch is left out, and the validation
            batch is chosen, so that no replica gets an empty share.

    Returns:
        ``(train_dataset, train_labels, val_dataset)``; the validation dataset
        is ``None`` when the validation split is empty.
    """
    augment = config.augment
    augmentation = (
        make_augmentation(
            augment.rotation_degrees,
            augment.zoom,
            augment.horizontal_flip,
            seed=config.train.seed,
        )
        if augment.enabled
        else None
    )

    def pipeline(split: str, training: bool):
        chosen = [r for r in records if r.split == split]
        if not chosen:
            return None, []
        labels = [CLASS_INDEX[r.class_name] for r in chosen]
        batch = batch_size or config.train.batch_size
        drop_remainder = training and replicas > 1
        if replicas > 1 and not training:
            shared = shareable_batch_size(len(chosen), batch, replicas)
            if shared is None:
                logger.warning(
                    "The %s split's %d images cannot be shared evenly by %d "
                    "replicas; its last %d are left out of each evaluation.",
                    split,
                    len(chosen),
                    replicas,
                    len(chosen) % batch,
                )
            batch, drop_remainder = shared or batch, shared is None
        dataset = records_dataset(
            config,
            chosen,
            batch,
            training=training,
            augmentation=augmentation if training else None,
            cache=_cache_for(config.data.cache, split),
            seed=config.train.seed,
            drop_remainder=drop_remainder,
        )
        return dataset, labels

    train_ds, train_labels = pipeline("train", training=True)
    val_ds, _ = pipeline("val", training=False)
    if train_ds is None:
        raise ValueError("The training split is empty: there is nothing to train on.")
    batch = batch_size or config.train.batch_size
    if replicas > 1 and len(train_labels) < batch:
        raise ValueError(
            f"The training split holds {len(train_labels)} images, fewer than one "
            f"global batch of {batch} ({replicas} replicas x train.batch_size); "
            "lower train.batch_size or add images."
        )
    return train_ds, train_labels, val_ds


def _cache_for(cache: str | None, split: str) -> str | None:
    return cache if cache in (None, "memory") else str(Path(cache) / split)


def probe_batch(
    config: RunConfig, records: list[Record]
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed sample of training images, as the model sees them, unaugmented.

    Args:
        config: the run's config; ``gradients.probe_size`` images are drawn,
            seeded by ``train.seed``.
        records: the split records; only the training split is drawn from.

    Returns:
        ``(images, one_hot_labels)`` of shapes ``(probe, size, size, 3)`` and
        ``(probe, 17)``; fewer images when the training split is smaller.
    """
    chosen = [r for r in records if r.split == "train"]
    if not chosen:
        raise ValueError("The training split is empty: there is no probe batch.")
    # Records are grouped by class: a seeded sample spreads the probe over them.
    sample = random.Random(config.train.seed).sample(
        chosen, min(config.gradients.probe_size, len(chosen))
    )
    dataset = records_dataset(config, sample, len(sample))
    images, labels = next(iter(dataset))
    return keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(labels)


def _gradient_logger(
    config: RunConfig,
    records: list[Record],
    run_dir: Path,
    weights: dict[int, float] | None,
) -> GradientNormLogger | None:
    """One logger for every stage, or ``None`` when gradient logging is off."""
    settings = config.gradients
    if not settings.enabled:
        return None
    images, labels = probe_batch(config, records)
    sample_weight = None
    if weights is not None:
        # The same class weighting as the training loss.
        sample_weight = np.array([weights[int(k)] for k in labels.argmax(axis=1)])
    return GradientNormLogger(
        images,
        labels,
        run_dir / "logs" / "gradients",
        probe_sample_weight=sample_weight,
        every_epochs=settings.every_epochs,
        every_steps=settings.every_steps,
        histograms=settings.histograms,
        vanishing_threshold=settings.vanishing_threshold,
        exploding_threshold=settings.exploding_threshold,
        stop_on_nonfinite=settings.stop_on_nonfinite,
        flow_plot=run_dir / "gradient_flow.png",
    )


def _callbacks(
    config: RunConfig,
    run_dir: Path,
    monitor: str,
    saver,
    gradient_logger: GradientNormLogger | None = None,
    guard: NonFiniteLossGuard | None = None,
    counters: dict | None = None,
) -> list:
    """The callbacks of one stage; the saver, logger and guard span both.

    ``counters`` are early-stopping and plateau counters to continue from (a
    resumed stage). The saver comes last so that it stores this epoch's.
    """
    train = config.train
    counters = counters or {}
    callbacks = [
        LearningRateInLogs(),
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
    ]
    if guard is not None:
        callbacks.append(guard)
    if gradient_logger is not None:
        callbacks.append(gradient_logger)
    if train.early_stopping_patience:
        callbacks.append(
            ResumableEarlyStopping(
                counters.get("early_stopping"),
                monitor=monitor,
                patience=train.early_stopping_patience,
                verbose=1,
            )
        )
    if train.reduce_lr_patience and train.lr_schedule == "plateau":
        callbacks.append(
            ResumableReduceLROnPlateau(
                counters.get("plateau"),
                monitor=monitor,
                factor=train.reduce_lr_factor,
                patience=train.reduce_lr_patience,
                min_lr=train.min_learning_rate,
                verbose=1,
            )
        )
    callbacks.append(saver)
    return callbacks


def _stages(config: RunConfig) -> list[tuple[str, int, float]]:
    """The stages to run, as ``(name, epochs, learning_rate)``."""
    frozen, fine = config.train.frozen, config.train.fine_tune
    stages = []
    if frozen.epochs > 0:
        stages.append(("frozen", frozen.epochs, frozen.learning_rate))
    if fine.epochs > 0:
        stages.append(("fine_tune", fine.epochs, fine.learning_rate))
    return stages


def _learning_rate(
    config: RunConfig,
    initial: float,
    epochs: int,
    n_train: int,
    batch_size: int | None = None,
):
    """A constant rate, or a cosine decay spanning the stage's steps."""
    if config.train.lr_schedule != "cosine":
        return initial
    steps = epochs * math.ceil(n_train / (batch_size or config.train.batch_size))
    return keras.optimizers.schedules.CosineDecay(initial, steps, alpha=0.01)


def _prepare_stage(classifier: NeuropathologyClassifier, config: RunConfig, stage: str):
    if stage == "frozen":
        classifier.freeze_backbone()
        return
    fine = config.train.fine_tune
    top = None if fine.unfreeze_layers == "all" else int(fine.unfreeze_layers)
    classifier.unfreeze_backbone(top, freeze_batchnorm=fine.freeze_batchnorm)


def _stage_plan(
    config: RunConfig, resume: ResumePoint | None
) -> tuple[list[tuple[str, int, float]], int, str | None]:
    """Where training starts: a new run's first stage, or a stopped run's.

    Returns:
        ``(stages, epochs_done_in_first, restore)``: the stages still to run,
        the epochs already done in the first of them, and what to restore from
        the checkpoint: ``"optimizer"`` state too (mid-stage), ``"weights"``
        only (a new stage) or ``None`` (a new run).
    """
    stages = _stages(config)
    if resume is None:
        return stages, 0, None
    names = [name for name, _, _ in stages]
    if resume.stage not in names:
        raise ValueError(
            f"Cannot resume {str(resume.run_dir)!r}: its checkpoint is from stage "
            f"{resume.stage!r}, which its config.yaml does not run {names}."
        )
    position = names.index(resume.stage)
    if resume.stage_finished:
        return stages[position + 1 :], 0, "weights"
    return stages[position:], int(resume.state["stage_epochs_done"]), "optimizer"


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume_point: ResumePoint | None = None,
) -> TrainingResult:
    """Trains a classifier as ``config`` says and evaluates it on the test split.

    The model is built and compiled under ``train.mixed_precision`` and inside
    the ``train.strategy``'s scope; each step takes ``train.batch_size``
    images per replica, at learning rates scaled by ``train.scale_learning_rate``.

    Args:
        config: the validated run config.
        run_dir: the run folder; by default a new one under ``config.runs_dir``.
            In a multi-worker run only the chief writes it; the other workers
            write to a temporary folder, returned in their result.
        resume_point: continue a stopped run from its last checkpoint instead
            (see `resume`); ``run_dir`` is then the point's.

    Returns:
        The `TrainingResult`; the run folder holds every artefact.

    Raises:
        TrainingDivergedError: the loss or the gradients stopped being finite;
            the last good checkpoint is kept and no final model is written.
    """
    # The strategy first: a multi-worker one must set up the runtime before
    # any other TensorFlow work.
    strategy = make_strategy(config.train.strategy)
    with precision_policy(config.train.mixed_precision):
        result = _train(
            config, worker_run_dir(strategy, run_dir), strategy, resume_point
        )
    wait_for_workers(strategy)
    return result


def _train(
    config: RunConfig, run_dir, strategy, resume_point: ResumePoint | None
) -> TrainingResult:
    started = time.monotonic()
    resumed_epochs = resume_point.epochs_done if resume_point else 0
    # A resumed run draws new shuffles rather than replaying the first epochs'.
    keras.utils.set_random_seed(config.train.seed + resumed_epochs)
    if resume_point is None:
        # Data and model first: a refused folder or a missing weights file
        # should leave no run folder.
        records, unusable = select_records(config)
        with strategy.scope():
            classifier = build_classifier(config)
        run_dir = prepare_run_dir(config, run_dir)
        _write_split(records, unusable, run_dir)
    else:
        run_dir = resume_point.run_dir
        saved = read_metadata(resume_point.checkpoint)["class_names"]
        check_class_names(
            saved, CLASS_NAMES, str(resume_point.checkpoint), "this version's classes"
        )
        records = read_manifest(run_dir / "split_manifest.csv", CLASS_NAMES)
        with strategy.scope():
            classifier = build_classifier(config)
        truncate_training_log(run_dir / "training_log.csv", resumed_epochs)
        truncate_event_logs(
            run_dir / "logs",
            resumed_epochs,
            resume_point.state.get("gradient_steps", 0),
        )
        logger.info(
            "Resuming %s after epoch %d (stage %s)",
            run_dir,
            resumed_epochs,
            resume_point.stage,
        )
    logger.info("Run folder: %s", run_dir)

    batch_size = global_batch_size(config.train.batch_size, strategy)
    replicas = strategy.num_replicas_in_sync
    train_ds, train_labels, val_ds = make_pipelines(
        config, records, batch_size, replicas
    )
    weights = (
        class_weights(train_labels, len(CLASS_NAMES))
        if config.train.class_weights
        else None
    )
    monitor = "val_loss" if val_ds is not None else "loss"
    gradient_logger = _gradient_logger(config, records, run_dir, weights)
    guard = NonFiniteLossGuard()
    progress: dict = {}

    def stage_state(epoch: int) -> dict:
        done = epoch + 1 - progress["first_epoch"]
        state = callback_state(progress["callbacks"])
        stopped = state.get("early_stopping", {}).get("stopped", False)
        return {
            "stage_epochs_done": done,
            "stage_finished": bool(stopped or done >= progress["epochs"]),
            "gradient_steps": gradient_logger.steps_done if gradient_logger else 0,
            **state,
        }

    saver = CheckpointSaver(
        classifier,
        run_dir / "checkpoints",
        monitor=monitor,
        extra_metadata={"config": config.to_dict()},
        state_provider=stage_state,
    )
    if resume_point is not None:
        best = resume_point.state.get("best")
        saver.best = math.inf if best is None else float(best)
        saver.best_epoch = resume_point.state.get("best_epoch")
        if gradient_logger is not None:
            # Limitation: gradient_flow.png then shows the resumed epochs only;
            # storing the flow records with the checkpoint would keep them all.
            gradient_logger.continue_from(resume_point.state.get("gradient_steps", 0))

    stages, stage_done, restore = _stage_plan(config, resume_point)
    verbose = 1 if sys.stdout.isatty() else 2
    epochs_done = resumed_epochs
    for stage, epochs, learning_rate in stages:
        _prepare_stage(classifier, config, stage)
        learning_rate = scaled_learning_rate(
            learning_rate, replicas, config.train.scale_learning_rate
        )
        with strategy.scope():
            classifier.compile(
                _learning_rate(
                    config, learning_rate, epochs, len(train_labels), batch_size
                ),
                clipnorm=config.train.gradient_clip_norm,
                jit_compile=config.train.jit_compile,
            )
        counters = {}
        if restore is not None:
            restore_checkpoint(
                classifier.model, resume_point.checkpoint, restore == "optimizer"
            )
            if restore == "optimizer":
                counters = resume_point.state
            restore = None
        saver.stage = stage
        callbacks = _callbacks(
            config, run_dir, monitor, saver, gradient_logger, guard, counters
        )
        progress.update(
            first_epoch=epochs_done - stage_done, epochs=epochs, callbacks=callbacks
        )
        logger.info(
            "Stage %s: %d epoch(s) at learning rate %g, %d trainable weight tensors, "
            "%d replica(s) of %d images a step",
            stage,
            epochs - stage_done,
            learning_rate,
            len(classifier.model.trainable_weights),
            replicas,
            config.train.batch_size,
        )
        with warnings.catch_warnings():
            # Dropping undecodable files leaves the epoch length unknown, so
            # Keras warns at the end of the first epoch; that end is expected.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = classifier.model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=epochs_done,
                epochs=epochs_done + epochs - stage_done,
                class_weight=weights,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles
                verbose=verbose,
            )
        epochs_done += len(history.epoch)
        stage_done = 0
        _raise_if_diverged(guard, gradient_logger, saver, run_dir)

    best = saver.best_path if saver.best_path.exists() else saver.last_path
    final = NeuropathologyClassifier.load(best)
    model_path = final.save(run_dir / "model.keras", extra={"config": config.to_dict()})
    logger.info("Final model (best epoch %s): %s", saver.best_epoch, model_path)

    test = [r for r in records if r.split == "test"]
    report = None
    if test:
        report = evaluate_records(
            final,
            test,
            config.data.data_dir,
            run_dir / "evaluation",
            batch_size=config.train.batch_size,
            provenance={"model": str(model_path), "run_dir": str(run_dir)},
        )
    minutes = (time.monotonic() - started) / 60
    accuracy = report["accuracy"] if report else None
    return TrainingResult(run_dir, model_path, accuracy, report, minutes, replicas)


def _raise_if_diverged(
    guard: NonFiniteLossGuard,
    gradient_logger: GradientNormLogger | None,
    saver: CheckpointSaver,
    run_dir: Path,
) -> None:
    if guard.diverged_at is not None:
        epoch, batch, loss = guard.diverged_at
        what = f"the loss became {loss} at epoch {epoch}, batch {batch}"
    elif gradient_logger is not None and gradient_logger.stopped_on_nonfinite:
        what = "the gradients stopped being finite"
    else:
        return
    if saver.last_path.exists():
        kept = (
            f"The last good checkpoint is kept: {saver.last_path} "
            f"(epoch {read_metadata(saver.last_path).get('epoch')})"
        )
    else:
        kept = "No epoch ended with a finite loss, so there is no checkpoint"
    raise TrainingDivergedError(
        f"Training diverged: {what}. {kept}; no final model was written. See "
        f"where the gradients grew with 'neuropath gradients {run_dir}' (or "
        f"TensorBoard on {run_dir / 'logs'}), then lower the learning rate or "
        "set train.gradient_clip_norm and train again."
    )


def resume(run_dir: str | Path) -> TrainingResult:
    """Continues a stopped run from the last epoch it completed.

    The run's own ``config.yaml`` and ``split_manifest.csv`` are used; training
    goes on in the stage it was in, with the optimizer's state, learning-rate
    schedule position and early-stopping counters of that epoch.

    Args:
        run_dir: the run folder of a killed or interrupted ``neuropath train``.

    Returns:
        The `TrainingResult` of the whole run.
    """
    point = load_resume_point(run_dir)
    return train(point.config, point.run_dir, resume_point=point)
