"""The scorer contract on real labelled data: anomalies rank above normal operation."""

import csv

import numpy as np

from cli.main import main
from model import artifact as artifact_io
from model.recording import read_recording
from model.training import TrainConfig, train


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random anomalous window outscores a random normal one."""
    ranks = scores.argsort().argsort() + 1
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_score_ranks_anomalous_windows_above_normal_ones(skab_dir, tmp_path, capsys):
    data = skab_dir / "valve1" / "1.csv"
    config = TrainConfig(train_rows=400, epochs=30, seed=0)
    model = tmp_path / "valve1.pt"
    artifact_io.save(train([read_recording(data)], config).artifact, model)
    out = tmp_path / "scores.csv"
    assert (
        main(["score", str(data), "--model", str(model), "--out", str(out), "--from-row", "400"])
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    with data.open() as f:
        labels = [int(float(r["anomaly"])) for r in csv.DictReader(f, delimiter=";")]
    y = np.array([labels[int(r["end_row"])] for r in rows], dtype=bool)
    scores = np.array([float(r["score"]) for r in rows])
    assert np.isfinite(scores).all()
    assert roc_auc(scores, y) > 0.8
    assert scores[y].mean() > scores[~y].mean()
