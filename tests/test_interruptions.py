"""Runs that are killed, diverge or meet a model file they must not trust."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from neuropath.cli import main
from neuropath.resume import truncate_event_logs
from neuropathology_model import (
    METADATA_ENTRY,
    ModelFileError,
    NeuropathologyClassifier,
    read_metadata,
)

DEMO_CONFIG = REPO / "configs" / "demo.yaml"
# Slow enough to be killed mid-epoch: 17 steps of 4 images per epoch.
RESUMABLE = [
    "data.image_size=32",
    "train.batch_size=4",
    "train.fine_tune.epochs=5",
    "gradients.histograms=false",
]


def _epochs(run_dir):
    with open(run_dir / "training_log.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [int(r["epoch"]) for r in rows], [float(r["learning_rate"]) for r in rows]


def _event_steps(folder, tag=None):
    """Steps of the scalar events in each event file of a folder, file by file."""
    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        found = []
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            values = event.summary.value if event.HasField("summary") else []
            if any(tag is None or v.tag == tag for v in values):
                found.append(event.step)
        steps.append(found)
    return steps


def _wait_for(predicate, process, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"training ended early with status {process.returncode}")
        time.sleep(0.1)
    process.kill()
    pytest.fail("training did not reach the point to kill it")


def test_a_run_killed_mid_epoch_resumes_without_losing_or_repeating_epochs(
    demo_subset, tmp_path
):
    run_dir = tmp_path / "run"
    output = tmp_path / "first.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "neuropath", "train"]
    with open(output, "w") as log:
        process = subprocess.Popen(
            [*command, "--config", str(DEMO_CONFIG), "--data-dir", str(demo_subset)]
            + ["--run-dir", str(run_dir), *RESUMABLE],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Keras prints "Epoch 3/5" as the third epoch starts: two are done.
        _wait_for(lambda: "Epoch 3/5" in output.read_text(), process)
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()

    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "model.keras").exists()
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["stage_finished"] is False
    # The last checkpoint loads, whatever moment the kill came at.
    assert NeuropathologyClassifier.load(run_dir / "checkpoints" / "last.keras")
    # What a kill during a save leaves behind; resuming removes it.
    (run_dir / "checkpoints" / "tmpk1ll3d.keras").write_bytes(b"PK\x03\x04")

    resumed = subprocess.run(
        [*command, "--resume", str(run_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stderr and "after epoch 2" in resumed.stderr
    epochs, rates = _epochs(run_dir)
    assert epochs == [0, 1, 2, 3, 4]
    # The cosine schedule went on from its position instead of restarting.
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert (run_dir / "model.keras").is_file()
    assert not (run_dir / "checkpoints" / "tmpk1ll3d.keras").exists()
    assert (
        json.loads((run_dir / "checkpoints" / "state.json").read_text())["epochs_done"]
        == 5
    )
    # TensorBoard's epoch axis and the gradient logs' step axis continue.
    loss_steps = _event_steps(run_dir / "logs" / "train", "epoch_loss")
    assert sorted(sum(loss_steps, [])) == [0, 1, 2, 3, 4]
    gradient_steps = [s for s in _event_steps(run_dir / "logs" / "gradients") if s]
    assert len(gradient_steps) == 2
    assert max(gradient_steps[0]) < min(gradient_steps[1])


def test_events_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    # What a kill between TensorBoard's write of epoch index 3 and its
    # checkpoint leaves: epochs 0-3 and gradient probes at steps 10-40 logged,
    # a checkpoint after three epochs at gradient step 30.
    logs = tmp_path / "logs"
    for folder, steps in (("train", range(4)), ("gradients", (10, 20, 30, 40))):
        with tf.summary.create_file_writer(str(logs / folder)).as_default():
            for step in steps:
                tf.summary.scalar("loss", float(step), step=step)
    (events,) = (logs / "gradients").glob("events.out.tfevents.*")
    # A record cut short by the kill.
    events.write_bytes(events.read_bytes() + b"\x10\x00\x00")

    truncate_event_logs(logs, epochs_done=3, gradient_steps=30)

    assert _event_steps(logs / "train", "loss") == [[0, 1, 2]]
    assert _event_steps(logs / "gradients", "loss") == [[10, 20, 30]]
    assert [p.name for p in (logs / "gradients").iterdir()] == [events.name]


def test_resume_refuses_a_finished_run_and_a_run_without_a_checkpoint(tmp_path, capsys):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "model.keras").write_bytes(b"")
    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    shutil.copy(DEMO_CONFIG, early / "config.yaml")
    (early / "split_manifest.csv").write_text("path,class_name,label,split\n")

    assert main(["train", "--resume", str(finished)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "--resume", str(early)]) == 2
    assert "no epoch finished before it stopped" in capsys.readouterr().err
    assert main(["train", "--resume", str(early), "--config", "x.yaml"]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_exits_1(
    demo_subset, tmp_path, capsys
):
    run_dir = tmp_path / "run"

    code = main(
        ["train", "--config", str(DEMO_CONFIG), "--data-dir", str(demo_subset)]
        + ["--run-dir", str(run_dir), "data.image_size=32", "train.batch_size=16"]
        + ["train.frozen.epochs=1", "train.fine_tune.epochs=2"]
        + ["train.fine_tune.learning_rate=1e30", "gradients.histograms=false"]
    )
    err = capsys.readouterr().err

    assert code == 1
    last = run_dir / "checkpoints" / "last.keras"
    assert "neuropath: Training diverged: the loss became nan at epoch 2" in err
    assert f"The last good checkpoint is kept: {last} (epoch 1)" in err
    assert f"neuropath gradients {run_dir}" in err
    assert not (run_dir / "model.keras").exists()
    assert read_metadata(last)["epoch"] == 1
    weights = NeuropathologyClassifier.load(last).model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    # The logs the message points at say where.
    assert main(["gradients", str(run_dir)]) == 0
    assert "alarms in" in capsys.readouterr().out


def _with_metadata(path, metadata):
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(METADATA_ENTRY, json.dumps(metadata))
    return path


def test_a_model_file_with_code_in_it_is_refused(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    _with_metadata(path, {"class_names": ["a"], "settings": {}, "versions": {}})

    with pytest.raises(ModelFileError, match="safe_mode"):
        NeuropathologyClassifier.load(path)


def test_a_model_from_an_incompatible_version_names_both_versions(
    small_model_file, tmp_path
):
    path = tmp_path / "old.keras"
    with (
        zipfile.ZipFile(small_model_file) as source,
        zipfile.ZipFile(path, "w") as target,
    ):
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(
                    b'"class_name": "Functional"', b'"class_name": "Sequential2"'
                )
            if item.filename == METADATA_ENTRY:
                metadata = json.loads(data)
                metadata["versions"] = {"keras": "2.15.0", "tensorflow": "2.15.1"}
                data = json.dumps(metadata).encode()
            target.writestr(item, data)

    with pytest.raises(ModelFileError) as raised:
        NeuropathologyClassifier.load(path)

    assert (
        "saved with Keras 2.15.0 / TensorFlow 2.15.1; this is Keras "
        f"{keras.__version__} / TensorFlow {tf.__version__}"
    ) in str(raised.value)


def test_a_run_stopped_between_stages_resumes_with_the_next_stage(
    demo_subset, tmp_path, monkeypatch, caplog
):
    from neuropath.config import load_config
    from neuropath.divergence import NonFiniteLossGuard
    from neuropath.training import resume, train

    config = load_config(
        DEMO_CONFIG,
        [f"data.data_dir={demo_subset}", "data.image_size=32", "train.batch_size=16"]
        + ["train.frozen.epochs=1", "train.fine_tune.epochs=1"]
        + ["gradients.enabled=false"],
    )
    run_dir = tmp_path / "run"
    original = NonFiniteLossGuard.on_epoch_begin

    def interrupt_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C as the fine-tuning stage starts
        original(self, epoch, logs)

    monkeypatch.setattr(NonFiniteLossGuard, "on_epoch_begin", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir)
    monkeypatch.setattr(NonFiniteLossGuard, "on_epoch_begin", original)
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert (state["stage"], state["stage_finished"]) == ("frozen", True)
    caplog.set_level("INFO", logger="neuropath.training")

    result = resume(run_dir)

    stages = [r.getMessage() for r in caplog.records if "Stage" in r.getMessage()]
    assert len(stages) == 1 and stages[0].startswith("Stage fine_tune: 1 epoch(s)")
    assert _epochs(run_dir)[0] == [0, 1]
    assert read_metadata(result.model_path)["class_names"]
    assert read_metadata(run_dir / "checkpoints" / "last.keras")["stage"] == "fine_tune"
