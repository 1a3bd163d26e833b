"""The PNG written beside a trained model: loss curves and held-out scores vs the threshold."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers

import matplotlib.pyplot as plt  # noqa: E402

from model.training import TrainResult  # noqa: E402


def write_report(result: TrainResult, path: str | Path) -> Path:
    """Two panels an engineer checks before trusting a model: convergence and the threshold."""
    path = Path(path)
    fig, (loss_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = range(1, len(result.train_loss) + 1)
    loss_ax.plot(epochs, result.train_loss, label="train (MSE + L2)")
    loss_ax.plot(epochs, result.holdout_mse, label="held-out MSE (stopping slice)")
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="Training")
    loss_ax.legend()
    hist_ax.hist(result.holdout_scores, bins=40, color="tab:gray")
    hist_ax.axvline(result.artifact.threshold, color="tab:red", label="threshold")
    hist_ax.set(xlabel="score", ylabel="reference windows", title="Held-out normal scores")
    hist_ax.legend()
    fig.suptitle(f"faultwatch model {result.artifact.version} ({result.artifact.architecture})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
