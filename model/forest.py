"""Isolation Forest (Liu, Ting & Zhou 2008) as plain arrays: fitted and scored with numpy.

A tree splits a random feature at a random value between its sampled minimum and maximum
until a point stands alone or the depth limit is reached; anomalies are isolated in fewer
splits. The trees of a forest are stored side by side, padded to the same node count:

    feature (T, N) int32    the feature a node splits on; -1 at a leaf
    threshold (T, N) f64    go left when feature value < threshold
    left, right (T, N) i32  child node indices (always greater than the node's own); -1 at a leaf
    depth (T, N) f64        at a leaf: its depth + c(points left there), the expected path

so loading is reading numbers (never unpickling) and scoring is a few gathers per level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TREES = 100
SAMPLE = 256  # points per tree, as in the paper: small samples isolate anomalies best
MAX_DEPTH = 64  # stored trees deeper than this are refused (fitted ones reach log2(SAMPLE))
MAX_NODES = 1 << 12  # per tree (a fitted tree has at most 2 * SAMPLE - 1)
MAX_TREES = 1 << 10


def average_path(n: np.ndarray | float) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary tree of n points."""
    n = np.asarray(n, dtype=np.float64)
    harmonic = np.log(np.maximum(n - 1, 1)) + 0.5772156649
    return np.where(n > 2, 2 * harmonic - 2 * (n - 1) / np.maximum(n, 1), np.where(n == 2, 1, 0))


@dataclass(frozen=True)
class Forest:
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    depth: np.ndarray
    sample: int  # points each tree was grown on: c(sample) normalises path lengths
    levels: int  # splits from the root to the deepest leaf

    @classmethod
    def fit(cls, points: np.ndarray, seed: int = 0, trees: int = TREES) -> Forest:
        """Grow `trees` trees on (P, F) points, each on a random sample of SAMPLE of them."""
        rng = np.random.default_rng(seed)
        sample = min(SAMPLE, len(points))
        limit = max(1, math.ceil(math.log2(max(sample, 2))))
        grown = [
            _grow(points[rng.choice(len(points), sample, replace=False)], limit, rng)
            for _ in range(trees)
        ]
        nodes = max(len(t[0]) for t in grown)
        arrays = [
            np.full((trees, nodes), fill, dtype)
            for fill, dtype in (
                (-1, np.int32),
                (0.0, np.float64),
                (-1, np.int32),
                (-1, np.int32),
                (0.0, np.float64),
            )
        ]
        for i, tree in enumerate(grown):
            for array, values in zip(arrays, tree, strict=True):
                array[i, : len(values)] = values
        return cls(*arrays, sample=sample, levels=limit)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], features: int) -> Forest:
        """Checked trees: equal shapes, features in range, children after their parent and
        inside the arrays (so no cycle), finite numbers, bounded depth; ValueError otherwise."""
        feature, left, right = (arrays[k] for k in ("feature", "left", "right"))
        threshold, depth, sample = (arrays[k] for k in ("threshold", "depth", "sample"))
        shape = feature.shape
        if len(shape) != 2 or not (1 <= shape[0] <= MAX_TREES and 1 <= shape[1] <= MAX_NODES):
            raise ValueError(
                f"forest of shape {shape} is not (1..{MAX_TREES} trees, 1..{MAX_NODES} nodes)"
            )
        for name in ("threshold", "left", "right", "depth"):
            if arrays[name].shape != shape:
                raise ValueError(f"forest {name} has shape {arrays[name].shape}, not {shape}")
        if sample.shape != () or not (np.isfinite(sample) and 2 <= sample <= MAX_NODES):
            raise ValueError("forest sample size is not a number of points")
        ints = [a.astype(np.int64) for a in (feature, left, right)]
        if any(not np.array_equal(a, b) for a, b in zip(ints, (feature, left, right), strict=True)):
            raise ValueError("forest indices are not integers")
        feature, left, right = ints
        leaf = feature < 0
        own = np.arange(shape[1])
        if (feature < -1).any() or (feature >= features).any():
            raise ValueError(f"forest splits on a feature outside 0..{features - 1}")
        inside = (left > own) & (right > own) & (left < shape[1]) & (right < shape[1])
        if not (inside | leaf).all():
            raise ValueError("forest child indices point outside the tree or back up it")
        if ((left[leaf] != -1) | (right[leaf] != -1)).any():
            raise ValueError("forest leaves have children")
        if not (np.isfinite(threshold).all() and np.isfinite(depth).all() and (depth >= 0).all()):
            raise ValueError("forest thresholds or path lengths are not finite")
        levels = _levels(leaf, left, right)
        if levels > MAX_DEPTH:
            raise ValueError(f"forest trees are {levels} levels deep, more than {MAX_DEPTH}")
        return cls(
            feature.astype(np.int32),
            threshold.astype(np.float64),
            left.astype(np.int32),
            right.astype(np.int32),
            depth.astype(np.float64),
            int(sample),
            levels,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "depth": self.depth,
            "sample": np.array(float(self.sample)),
        }

    def path_length(self, points: np.ndarray) -> np.ndarray:
        """(B,) the mean over trees of each point's path length (short: easily isolated)."""
        trees = np.arange(self.feature.shape[0])[None, :]  # (1, T)
        node = np.zeros((len(points), self.feature.shape[0]), dtype=np.int64)  # (B, T)
        rows = np.arange(len(points))[:, None]  # (B, 1)
        for _ in range(self.levels):
            feature = self.feature[trees, node]  # (B, T)
            inner = feature >= 0
            value = points[rows, np.maximum(feature, 0)]  # (B, T)
            child = np.where(
                value < self.threshold[trees, node], self.left[trees, node], self.right[trees, node]
            )
            node = np.where(inner, child, node)
        return self.depth[trees, node].mean(axis=1)

    def score(self, points: np.ndarray) -> np.ndarray:
        """(B,) c(sample) / mean path length: about 1 for normal points, larger when a point
        is isolated early (2 ** -(1 / score) is the paper's anomaly score)."""
        return float(average_path(self.sample)) / np.maximum(self.path_length(points), 1e-9)


def _grow(points: np.ndarray, limit: int, rng: np.random.Generator) -> tuple[list, ...]:
    """One tree in pre-order (children after their parent): feature, threshold, left, right,
    depth lists."""
    feature, threshold, left, right, depth = [], [], [], [], []

    def node(members: np.ndarray, level: int) -> int:
        index = len(feature)
        for column in (feature, left, right):
            column.append(-1)
        threshold.append(0.0)
        depth.append(0.0)
        low, high = members.min(axis=0), members.max(axis=0)
        splittable = np.flatnonzero(high > low)
        if level >= limit or len(members) <= 1 or not len(splittable):
            depth[index] = level + float(average_path(len(members)))
            return index
        f = int(rng.choice(splittable))
        cut = float(rng.uniform(low[f], high[f]))
        go_left = members[:, f] < cut
        if go_left.all() or not go_left.any():  # a cut on the minimum itself: take the maximum
            cut = float(high[f])
            go_left = members[:, f] < cut
        feature[index], threshold[index] = f, cut
        left[index] = node(members[go_left], level + 1)
        right[index] = node(members[~go_left], level + 1)
        return index

    node(points, 0)
    return feature, threshold, left, right, depth


def _levels(leaf: np.ndarray, left: np.ndarray, right: np.ndarray) -> int:
    """Splits from the root to the deepest reachable node, every tree at once, level by level;
    MAX_DEPTH + 1 when deeper (the walk stops there, whatever the file declares)."""
    trees, nodes = leaf.shape
    rows = np.arange(trees)[:, None].repeat(nodes, axis=1)  # (T, N)
    frontier = np.zeros((trees, nodes), dtype=bool)
    frontier[:, 0] = True
    for level in range(MAX_DEPTH + 1):
        inner = frontier & ~leaf
        if not inner.any():
            return level
        frontier = np.zeros_like(frontier)
        frontier[rows[inner], left[inner]] = True
        frontier[rows[inner], right[inner]] = True
    return MAX_DEPTH + 1
