"""Two-stage training of the classifier into a run folder.

A *run folder* holds everything one training run produced: the resolved
config, the split manifest, class names, checkpoints, the CSV and TensorBoard
logs (with the gradient logs of a fixed *probe batch* under ``logs/gradients``),
the final model and its test-split evaluation. Stage 1 (*frozen*)
trains the head on a frozen backbone; stage 2 (*fine-tune*) unfreezes the top
of the backbone at a lower learning rate. Either stage may be skipped.
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
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import yaml

from neuropath.callbacks import CheckpointSaver, LearningRateInLogs
from neuropath.classes import CLASS_NAMES
from neuropath.config import RunConfig
from neuropath.dataset import (
    Record,
    class_weights,
    make_augmentation,
    make_dataset,
    read_manifest,
    scan_dataset,
    split_records,
    write_manifest,
)
from neuropath.evaluation import evaluate_records
from neuropath.gradient_logging import GradientNormLogger
from neuropathology_model import NeuropathologyClassifier

__all__ = [
    "TrainingResult",
    "build_classifier",
    "make_pipelines",
    "prepare_run_dir",
    "probe_batch",
    "train",
]

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
    """

    run_dir: Path
    model_path: Path
    test_accuracy: float | None
    report: dict | None
    minutes: float


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


def _split(config: RunConfig, run_dir: Path) -> list[Record]:
    """Reuses the configured manifest or splits the data folder anew."""
    data = config.data
    if data.manifest:
        records = read_manifest(data.manifest, CLASS_NAMES)
        logger.info(
            "Reusing split manifest %s (%d images)", data.manifest, len(records)
        )
    else:
        scan = scan_dataset(data.data_dir, CLASS_NAMES, verify=data.verify_images)
        if not scan.records:
            raise ValueError(
                f"No usable images under {data.data_dir!r}: expected class "
                "folders such as 'NORMAL T1' holding .jpg/.png files."
            )
        if scan.unusable:
            _write_unusable(scan.unusable, run_dir / "unusable_files.csv")
        records = split_records(
            scan.records, data.val_fraction, data.test_fraction, data.seed
        )
    write_manifest(records, run_dir / "split_manifest.csv", CLASS_NAMES)
    for split in ("train", "val", "test"):
        logger.info(
            "%s split: %d images", split, sum(r.split == split for r in records)
        )
    return records


def _write_unusable(unusable: list[tuple[str, str]], path: Path) -> None:
    lines = ["path,reason"] + [f'"{p}","{reason}"' for p, reason in unusable]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.warning("%d unusable file(s) listed in %s", len(unusable), path)


def make_pipelines(config: RunConfig, records: list[Record]):
    """Builds the training and validation pipelines of a split.

    Args:
        config: the run's config (data, augmentation, batch size, seed).
        records: the split records.

    Returns:
        ``(train_dataset, train_labels, val_dataset)``; the validation dataset
        is ``None`` when the validation split is empty.
    """
    root = Path(config.data.data_dir)
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
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
        labels = [index[r.class_name] for r in chosen]
        dataset = make_dataset(
            [root / r.path for r in chosen],
            labels,
            len(CLASS_NAMES),
            config.data.image_size,
            config.train.batch_size,
            training=training,
            augmentation=augmentation if training else None,
            cache=_cache_for(config.data.cache, split),
            seed=config.train.seed,
        )
        return dataset, labels

    train_ds, train_labels = pipeline("train", training=True)
    val_ds, _ = pipeline("val", training=False)
    if train_ds is None:
        raise ValueError("The training split is empty: there is nothing to train on.")
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
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    dataset = make_dataset(
        [Path(config.data.data_dir) / r.path for r in sample],
        [index[r.class_name] for r in sample],
        len(CLASS_NAMES),
        config.data.image_size,
        len(sample),
        training=False,
    )
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
) -> list:
    """The callbacks of one stage; the saver and gradient logger span both."""
    train = config.train
    callbacks = [
        LearningRateInLogs(),
        saver,
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
    ]
    if gradient_logger is not None:
        callbacks.append(gradient_logger)
    if train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=train.early_stopping_patience, verbose=1
            )
        )
    if train.reduce_lr_patience and train.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=train.reduce_lr_factor,
                patience=train.reduce_lr_patience,
                min_lr=train.min_learning_rate,
                verbose=1,
            )
        )
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


def _learning_rate(config: RunConfig, initial: float, epochs: int, n_train: int):
    """A constant rate, or a cosine decay spanning the stage's steps."""
    if config.train.lr_schedule != "cosine":
        return initial
    steps = epochs * math.ceil(n_train / config.train.batch_size)
    return keras.optimizers.schedules.CosineDecay(initial, steps, alpha=0.01)


def _prepare_stage(classifier: NeuropathologyClassifier, config: RunConfig, stage: str):
    if stage == "frozen":
        classifier.freeze_backbone()
        return
    fine = config.train.fine_tune
    top = None if fine.unfreeze_layers == "all" else int(fine.unfreeze_layers)
    classifier.unfreeze_backbone(top, freeze_batchnorm=fine.freeze_batchnorm)


def train(config: RunConfig, run_dir: str | Path | None = None) -> TrainingResult:
    """Trains a classifier as ``config`` says and evaluates it on the test split.

    Args:
        config: the validated run config.
        run_dir: the run folder; by default a new one under ``config.runs_dir``.

    Returns:
        The `TrainingResult`; the run folder holds every artefact.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.train.seed)
    # The model first: a missing weights file should leave no run folder.
    classifier = build_classifier(config)
    run_dir = prepare_run_dir(config, run_dir)
    logger.info("Run folder: %s", run_dir)

    records = _split(config, run_dir)
    train_ds, train_labels, val_ds = make_pipelines(config, records)
    weights = (
        class_weights(train_labels, len(CLASS_NAMES))
        if config.train.class_weights
        else None
    )

    monitor = "val_loss" if val_ds is not None else "loss"
    saver = CheckpointSaver(
        classifier,
        run_dir / "checkpoints",
        monitor=monitor,
        extra_metadata={"config": config.to_dict()},
    )
    gradient_logger = _gradient_logger(config, records, run_dir, weights)
    verbose = 1 if sys.stdout.isatty() else 2
    epochs_done = 0
    for stage, epochs, learning_rate in _stages(config):
        if gradient_logger is not None and gradient_logger.stopped_on_nonfinite:
            logger.warning("Stage %s skipped: the gradients were not finite.", stage)
            break
        _prepare_stage(classifier, config, stage)
        classifier.compile(
            _learning_rate(config, learning_rate, epochs, len(train_labels)),
            clipnorm=config.train.gradient_clip_norm,
        )
        saver.stage = stage
        logger.info(
            "Stage %s: %d epoch(s) at learning rate %g, %d trainable weight tensors",
            stage,
            epochs,
            learning_rate,
            len(classifier.model.trainable_weights),
        )
        with warnings.catch_warnings():
            # Dropping undecodable files leaves the epoch length unknown, so
            # Keras warns at the end of the first epoch; that end is expected.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = classifier.model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=epochs_done,
                epochs=epochs_done + epochs,
                class_weight=weights,
                callbacks=_callbacks(config, run_dir, monitor, saver, gradient_logger),
                shuffle=False,  # the pipeline shuffles
                verbose=verbose,
            )
        epochs_done += len(history.epoch)

    best = saver.best_path if saver.best_path.exists() else saver.last_path
    if not best.exists():
        raise ValueError(
            f"Training left no checkpoint in {str(saver.directory)!r}: the loss "
            "was not finite from the first epoch on. Lower the learning rate or "
            "set train.gradient_clip_norm."
        )
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
    return TrainingResult(run_dir, model_path, accuracy, report, minutes)
