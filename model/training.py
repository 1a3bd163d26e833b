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
    holdout: float = 0.2  # last share of each recording's windows: early stopping, references
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


@dataclass
class TrainResult:
    artifact: Artifact
    train_loss: list[float]  # per epoch, MSE + L2
    holdout_mse: list[float]  # per epoch
    holdout_scores: np.ndarray
    windows_train: int
    windows_holdout: int
    gaps_filled: int
    windows_skipped: int
    seconds: float


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
    filled = [fill_gaps(p.values, config.preprocess.max_gap) for p in parts]
    fit_w, hold_w, skipped = _split_windows([v for v, _ in filled], config)
    standardizer = Standardizer.fit(
        np.concatenate([v for v, _ in filled]), np.concatenate([fit_w, hold_w]), config.preprocess
    )
    x_fit = torch.from_numpy(model_input(fit_w, config.preprocess, standardizer))
    x_hold = torch.from_numpy(model_input(hold_w, config.preprocess, standardizer))

    torch.manual_seed(config.seed)
    net = networks.build(config.architecture, net_config)
    losses, holdout_mse, best = _fit(net, x_fit, x_hold, config, progress)
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
    # The detectors are fitted on all training windows, fitting and held-out ones alike (as
    # the level scale always was), then calibrated on the held-out ones: each reference is
    # the rule's quantile of that detector's raw scores, which do not depend on references.
    fit_batch = Scorer(probe).batch(np.concatenate([fit_w, hold_w]), error=True)
    detectors = tuple(DETECTORS[name].fit(fit_batch, config.seed) for name in names)
    del fit_batch
    probe = replace(probe, detectors=detectors, references=dict.fromkeys(names, 1.0))
    raw = Scorer(probe).detector_scores(hold_w)
    references = {name: config.threshold.reference(raw[name]) for name in names}
    seconds = time.monotonic() - started
    training = {
        "files": [r.path.name for r in recordings],
        "train_rows": config.train_rows,
        "windows_train": len(fit_w),
        "windows_holdout": len(hold_w),
        "epochs": len(losses),
        "seed": config.seed,
        "l2_lambda": config.l2_lambda,
        "threshold_rule": config.threshold.to_dict(),
        "final_train_loss": losses[-1],
        "best_holdout_mse": min(holdout_mse),
    }
    artifact = replace(probe, references=references, training=training)
    holdout_scores = Scorer(artifact).score(hold_w).score
    # The model's own score distribution on normal data it was not fitted to: the baseline a
    # running worker's recent scores can be compared with (score drift).
    quantiles = np.quantile(holdout_scores, np.linspace(0.0, 1.0, QUANTILES))
    artifact = replace(artifact, score_quantiles=quantiles)
    return TrainResult(
        artifact,
        losses,
        holdout_mse,
        holdout_scores,
        len(fit_w),
        len(hold_w),
        sum(n for _, n in filled),
        skipped,
        seconds,
    )


def _common_channels(recordings: list[Recording]) -> list[str]:
    if not recordings:
        raise DataError("no recordings to train on")
    channels = recordings[0].channels
    for r in recordings[1:]:
        if r.channels != channels:
            raise DataError(f"{r.path}: channels {r.channels} differ from {channels}")
    return channels


def _split_windows(
    series: list[np.ndarray], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """Windows of every recording, stride 1; the last `holdout` share of each is held out.

    Windows touching a gap too long to interpolate are dropped and counted.
    """
    fit, hold, skipped = [], [], 0
    for values in series:
        windows = sliding_windows(values, config.window)
        ok = ~np.isnan(windows).any(axis=(1, 2))
        skipped += int((~ok).sum())
        windows = windows[ok]
        cut = len(windows) - max(1, int(round(len(windows) * config.holdout)))
        fit.append(windows[:cut])
        hold.append(windows[cut:])
    fit_w, hold_w = np.concatenate(fit), np.concatenate(hold)
    if len(fit_w) < 2 or len(hold_w) < 1:
        rows = sum(len(v) for v in series)
        raise DataError(
            f"{rows} training rows give too few windows of {config.window}; "
            "use more rows or a shorter --window"
        )
    return fit_w, hold_w, skipped


def _fit(
    net: torch.nn.Module,
    x_fit: torch.Tensor,
    x_hold: torch.Tensor,
    config: TrainConfig,
    progress: Progress | None,
) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """Adam on the data term + L2 (explicit, not decoupled weight decay); early stopping on
    the held-out reconstruction MSE."""
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    losses, holdout, best_state = [], [], None
    best, stale = float("inf"), 0
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for i in range(0, len(x_fit), config.batch_size):
            batch = x_fit[order[i : i + config.batch_size]]
            loss, _ = loss_fn(net, batch, config.l2_lambda)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        net.eval()
        with torch.inference_mode():
            mse = torch.nn.functional.mse_loss(net(x_hold), x_hold).item()
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


def summary(result: TrainResult) -> dict:
    """Figures for the end-of-training summary line."""
    return {
        "architecture": result.artifact.architecture,
        "windows": result.windows_train,
        "held_out": result.windows_holdout,
        "epochs": len(result.train_loss),
        "train_loss": round(result.train_loss[-1], 5),
        "best_holdout_mse": round(min(result.holdout_mse), 5),
        "threshold": round(result.artifact.threshold, 5),
        "gaps_filled": result.gaps_filled,
        "windows_skipped": result.windows_skipped,
        "seconds": round(result.seconds, 1),
        "version": result.artifact.version,
    }
