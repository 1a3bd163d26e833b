"""Training a network of the family on normal recordings: early stopping, fitted detectors,
calibrated references and the stored score distribution."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from model import detectors as detector_registry
from model import machines as machine_patterns
from model import networks
from model.artifact import QUANTILES, Artifact
from model.detectors import DETECTORS
from model.errors import DataError
from model.networks import Architecture, loss_fn
from model.preprocessing import (
    PreprocessConfig,
    Standardizer,
    fill_gaps,
    model_input,
    sliding_windows,
)
from model.recording import Recording
from model.scoring import Scorer
from model.threshold import ThresholdRule


@dataclass(frozen=True)
class TrainConfig:
    # 20 samples (20 s at 1 Hz): enough to average sensor noise and to see a step inside the
    # window, short enough to alarm within seconds and to keep the slow drift within one
    # window small. --window 125 on 8 channels gives the specification's 1000 inputs.
    window: int = 20
    train_rows: int | None = None
    epochs: int = 200
    seed: int = 0
    l2_lambda: float = 1e-5
    lr: float = 1e-3
    batch_size: int = 64
    # Each recording's windows, in time order: fitting | stopping | reference, with the W-1
    # windows that share rows with the slice before dropped at each cut. The stopping slice
    # picks the early-stopping epoch; the reference slice, which nothing was fitted or chosen
    # on, sets the detectors' references and the stored score distribution.
    stopping: float = 0.1  # share of each recording's windows
    holdout: float = 0.2  # share of each recording's windows: the references
    patience: int = 15
    architecture: Architecture = "dense"
    hidden: int = 512  # dense and vae: units of the hidden layers
    bottleneck: int = 32  # every architecture: the code's width
    # Other hyper-parameters of the architecture, over its defaults (model/networks.py):
    # conv filters/kernel, attention d_model/heads/blocks/project, vae beta.
    network: dict = field(default_factory=dict)
    detectors: tuple[str, ...] = detector_registry.DEFAULT_DETECTORS
    machines: tuple[str, ...] = machine_patterns.ALL
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    threshold: ThresholdRule = field(default_factory=ThresholdRule)
    # Known anomalies (Recording.labels, from train --anomaly-column): windows holding one are
    # kept out of every normal fit and, with a weight > 0 (--anomaly-weight), their
    # reconstruction error is pushed above `anomaly_margin` (standardised units) by a hinge
    # term in the loss. Off by default: on SKAB valve1 it did not help (benchmarks/labelled.py).
    anomaly_weight: float = 0.0
    anomaly_margin: float = 1.0


@dataclass
class TrainResult:
    artifact: Artifact
    train_loss: list[float]  # per epoch, MSE + L2 (+ the labelled-anomaly term)
    holdout_mse: list[float]  # per epoch, on the stopping slice
    holdout_scores: np.ndarray  # the fused score of the reference slice's windows
    windows_train: int
    windows_holdout: int  # stopping + reference windows
    gaps_filled: int
    windows_skipped: int
    seconds: float
    windows_stopping: int = 0
    windows_reference: int = 0
    windows_purged: int = 0
    windows_labelled: int = 0


@dataclass
class Split:
    """Raw (B, W, C) windows of every recording, by use; rows = the fitting windows' rows."""

    fit: np.ndarray
    stop: np.ndarray
    reference: np.ndarray
    labelled: np.ndarray  # windows holding a known anomaly
    rows: np.ndarray  # (N, C) the rows the fitting windows cover (the standardiser's)
    skipped: int  # over gaps too long to fill
    purged: int  # sharing rows with an earlier slice


Progress = Callable[[int, float, float], None]  # epoch, train loss, held-out mse


def train(
    recordings: list[Recording], config: TrainConfig, progress: Progress | None = None
) -> TrainResult:
    """Fit on the first `train_rows` rows of each recording; reproducible for a given seed."""
    started = time.monotonic()
    if not 1 <= config.preprocess.kernel <= config.window:
        raise DataError(
            f"denoising kernel {config.preprocess.kernel} must be 1 to the window ({config.window})"
        )
    channels = _common_channels(recordings)
    try:
        names = detector_registry.resolve(config.detectors)
        machines = machine_patterns.check(list(config.machines))
        net_config = networks.configure(
            config.architecture,
            config.window,
            len(channels),
            hidden=config.hidden,
            bottleneck=config.bottleneck,
            **config.network,
        )
    except (ValueError, TypeError) as exc:
        raise DataError(str(exc)) from None
    parts = [r.head(config.train_rows) for r in recordings]
    empty = np.isnan(np.concatenate([p.values for p in parts])).all(axis=0)  # (C,)
    if empty.any():
        name = channels[int(np.flatnonzero(empty)[0])]
        raise DataError(f"channel {name!r} has no values in the training rows")
    filled = [fill_gaps(p.values, config.preprocess.max_gap) for p in parts]
    split = _split_windows([v for v, _ in filled], [p.labels for p in parts], config)
    # Means, scales and slow flags from the fitting rows alone: the held-out slices must be
    # as new to the model as tomorrow's data.
    standardizer = Standardizer.fit(split.rows, split.fit, config.preprocess)
    x_fit = torch.from_numpy(model_input(split.fit, config.preprocess, standardizer))
    x_stop = torch.from_numpy(model_input(split.stop, config.preprocess, standardizer))
    x_bad = torch.from_numpy(model_input(split.labelled, config.preprocess, standardizer))
    _check_finite(standardizer, x_fit, x_stop, x_bad)

    torch.manual_seed(config.seed)
    net = networks.build(config.architecture, net_config)
    losses, holdout_mse, best = _fit(net, x_fit, x_stop, x_bad, config, progress)
    net.load_state_dict(best)

    state = {k: v.clone() for k, v in net.state_dict().items()}
    # Scores are in units of each detector's reference, so the threshold is the factor itself.
    probe = Artifact(
        net_config,
        config.window,
        channels,
        config.preprocess,
        standardizer,
        config.threshold.factor,
        state,
        detectors=(),
        references={},
        score_quantiles=np.zeros(QUANTILES),
        architecture=config.architecture,
        machines=machines,
    )
    # The detectors are fitted on the fitting windows only, then calibrated on the reference
    # slice: each reference is the rule's quantile of that detector's raw scores there.
    fit_batch = Scorer(probe).batch(split.fit, error=True)
    detectors = tuple(DETECTORS[name].fit(fit_batch, config.seed) for name in names)
    del fit_batch
    probe = replace(probe, detectors=detectors, references=dict.fromkeys(names, 1.0))
    raw = Scorer(probe).detector_scores(split.reference)
    try:
        references = {
            d.name: max(config.threshold.reference(raw[d.name]), d.reference_floor)
            for d in detectors
        }
    except ValueError as exc:
        raise DataError(f"calibration failed: {exc}; check the training data") from None
    seconds = time.monotonic() - started
    training = {
        "files": [r.path.name for r in recordings],
        "train_rows": config.train_rows,
        "windows_train": len(split.fit),
        "windows_stopping": len(split.stop),
        "windows_reference": len(split.reference),
        "windows_purged": split.purged,
        "windows_labelled": len(split.labelled),
        "epochs": len(losses),
        "seed": config.seed,
        "l2_lambda": config.l2_lambda,
        "threshold_rule": config.threshold.to_dict(),
        "final_train_loss": losses[-1],
        "best_holdout_mse": min(holdout_mse),
    }
    intervals = [i for i in (p.interval() for p in parts) if i is not None]
    interval = float(np.median(intervals)) if intervals else None
    artifact = replace(probe, references=references, training=training, sampling_interval=interval)
    holdout_scores = Scorer(artifact).score(split.reference).score
    # The model's own score distribution on normal data nothing was fitted or chosen on: the
    # baseline a running worker's recent scores can be compared with (score drift).
    quantiles = np.quantile(holdout_scores, np.linspace(0.0, 1.0, QUANTILES))
    artifact = replace(artifact, score_quantiles=quantiles)
    return TrainResult(
        artifact,
        losses,
        holdout_mse,
        holdout_scores,
        len(split.fit),
        len(split.stop) + len(split.reference),
        sum(n for _, n in filled),
        split.skipped,
        seconds,
        windows_stopping=len(split.stop),
        windows_reference=len(split.reference),
        windows_purged=split.purged,
        windows_labelled=len(split.labelled),
    )


def _common_channels(recordings: list[Recording]) -> list[str]:
    if not recordings:
        raise DataError("no recordings to train on")
    channels = recordings[0].channels
    for r in recordings[1:]:
        if r.channels != channels:
            raise DataError(f"{r.path}: channels {r.channels} differ from {channels}")
    return channels


def _check_finite(standardizer: Standardizer, *inputs: torch.Tensor) -> None:
    """Numbers near float's limit (1e300) are readings, yet their statistics overflow: say so
    in one line rather than train on infinities."""
    stats = np.concatenate([standardizer.mean, standardizer.scale])
    if not np.isfinite(stats).all() or not all(torch.isfinite(x).all() for x in inputs):
        raise DataError(
            "training values are too large to standardise (their statistics overflow); "
            "check the data for corrupt cells"
        )


def _split_windows(
    series: list[np.ndarray], labels: list[np.ndarray | None], config: TrainConfig
) -> Split:
    """Windows of every recording, stride 1, cut in time order into fitting | stopping |
    reference; the W-1 windows after each cut share rows with the slice before and are purged.

    Windows touching a gap too long to interpolate are dropped and counted; windows holding
    a labelled anomaly go to `labelled`, never to a normal slice.
    """
    w = config.window
    fit, stop, ref, bad, rows = [], [], [], [], []
    skipped = purged = 0
    for values, known in zip(series, labels, strict=True):
        windows = sliding_windows(values, w)
        ok = ~np.isnan(windows).any(axis=(1, 2))
        skipped += int((~ok).sum())
        anomalous = np.zeros(len(windows), dtype=bool)
        if known is not None and len(windows):
            anomalous = sliding_windows(known[:, None], w).any(axis=(1, 2))
        bad.append(windows[ok & anomalous])
        normal = np.flatnonzero(ok & ~anomalous)  # (n,) start rows of the normal windows
        n = len(normal)
        # Cut among the normal windows: a labelled fault at the end of the training rows must
        # not leave the held-out slices empty. Window b covers rows b .. b+W-1, so a slice
        # may only hold windows that end before the next slice's first row.
        reference = normal[n - max(1, int(round(n * config.holdout))) :]
        before = normal[normal <= reference[0] - w] if len(reference) else normal[:0]
        stopping = before[max(0, len(before) - max(1, int(round(n * config.stopping)))) :]
        fitting = normal[normal <= stopping[0] - w] if len(stopping) else normal[:0]
        if len(fitting) < 2:  # too short to cut in three: it adds nothing (checked below)
            fitting = stopping = reference = normal[:0]
        fit.append(windows[fitting])
        stop.append(windows[stopping])
        ref.append(windows[reference])
        purged += n - len(fitting) - len(stopping) - len(reference)
        # The rows the fitting windows cover: the standardiser sees nothing held out.
        starts = np.zeros(len(windows), dtype=np.int64)
        starts[fitting] = 1
        covered = np.convolve(starts, np.ones(w, dtype=np.int64))[: len(values)] > 0  # (N,)
        rows.append(values[covered])
    split = Split(
        *(np.concatenate(part) for part in (fit, stop, ref, bad)),
        rows=np.concatenate(rows),  # (N, C)
        skipped=skipped,
        purged=purged,
    )
    if len(split.fit) < 2 or len(split.stop) < 1 or len(split.reference) < 1:
        total = sum(len(v) for v in series)
        raise DataError(
            f"{total} training rows give too few normal windows of {w} to fit, stop early and "
            "calibrate on separate rows; use more rows or a shorter --window"
        )
    return split


def _fit(
    net: torch.nn.Module,
    x_fit: torch.Tensor,
    x_stop: torch.Tensor,
    x_bad: torch.Tensor,
    config: TrainConfig,
    progress: Progress | None,
) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """Adam on the data term + L2 (explicit, not decoupled weight decay) + the labelled-anomaly
    hinge; early stopping on the stopping slice's reconstruction MSE."""
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    use_bad = len(x_bad) > 0 and config.anomaly_weight > 0
    losses, holdout, best_state = [], [], None
    best, stale = float("inf"), 0
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for i in range(0, len(x_fit), config.batch_size):
            batch = x_fit[order[i : i + config.batch_size]]
            loss, _ = loss_fn(net, batch, config.l2_lambda)
            if use_bad:
                picks = torch.randint(len(x_bad), (len(batch),), generator=generator)
                loss = loss + config.anomaly_weight * anomaly_hinge(
                    net, x_bad[picks], config.anomaly_margin
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        net.eval()
        with torch.inference_mode():
            mse = torch.nn.functional.mse_loss(net(x_stop), x_stop).item()
        losses.append(total / len(x_fit))
        holdout.append(mse)
        if progress:
            progress(epoch + 1, losses[-1], mse)
        if mse < best - 1e-9:
            best, stale = mse, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is None:
        raise DataError("training diverged: the held-out error was never a finite number")
    return losses, holdout, best_state


def anomaly_hinge(net: torch.nn.Module, x_bad: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(relu(margin - MSE of each known-anomalous window)): zero once every labelled
    window reconstructs worse than `margin`, so the term cannot grow without bound."""
    error = (net(x_bad) - x_bad).pow(2).mean(dim=1)  # (B,)
    return torch.relu(margin - error).mean()


def summary(result: TrainResult) -> dict:
    """Figures for the end-of-training summary line."""
    return {
        "architecture": result.artifact.architecture,
        "windows": result.windows_train,
        "stopping": result.windows_stopping,
        "reference": result.windows_reference,
        "purged": result.windows_purged,
        "labelled": result.windows_labelled,
        "epochs": len(result.train_loss),
        "train_loss": round(result.train_loss[-1], 5),
        "best_holdout_mse": round(min(result.holdout_mse), 5),
        "threshold": round(result.artifact.threshold, 5),
        "gaps_filled": result.gaps_filled,
        "windows_skipped": result.windows_skipped,
        "seconds": round(result.seconds, 1),
        "version": result.artifact.version,
    }
