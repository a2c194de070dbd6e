"""The GrabCut energy (Rother et al. 2004) in numpy with a max-flow solver, at any resolution.

OpenCV's cv2.grabCut fixes the smoothness weight (gamma = 50) and always cuts the whole image.
Its energy is Σ data + Σ smoothness over pixels and neighbour pairs; shrinking the image by a
factor f shrinks the data sum by f² but boundary lengths only by f, so at a lower resolution the
same gamma over-smooths and objects collapse (on the cat photo, to one eye). So the image is
never shrunk for the cut: the working size's n-link planes are summed onto blocks instead
(multigrid.py), which keeps that balance exactly, and a cut can be limited to a band of pixels
(the rest held at known labels), which is how a block cut's edge is refined per pixel.

Conventions follow cv2.grabCut: labels are cv2.GC_BGD/FGD/PR_BGD/PR_FGD; each colour model is a
5-component Gaussian mixture whose component density is det(Σ)^-½·exp(-½ dᵀΣ⁻¹d); a pixel's
cost of being object is -log p_object(colour) and of being background -log p_background(colour);
neighbours (8-connected) pay gamma·exp(-beta·|Δcolour|²)/distance when the cut separates them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import maxflow
import numpy as np

COMPONENTS = 5
# (dy, dx) of the neighbour each n-link weight plane pairs a pixel with: left, up-left, up, up-right.
_OFFSETS = ((0, -1), (-1, -1), (-1, 0), (-1, 1))


def colour_features(bgr: np.ndarray) -> np.ndarray:
    """(10, N): per pixel the six products of its B, G, R, the three values, and 1. A Gaussian's
    Mahalanobis distance is linear in these, so one product scores every component. Features
    run along rows so that every per-pixel operation below works on contiguous arrays."""
    b, g, r = bgr.reshape(-1, 3).T.astype(np.float64)
    return np.stack([b * b, g * g, r * r, b * g, b * r, g * r, b, g, r, np.ones_like(b)])


@dataclass
class Mixture:
    """A Gaussian mixture over BGR colours (float64), in cv2.grabCut's parametrisation."""

    coefs: np.ndarray  # (K,)
    means: np.ndarray  # (K, 3)
    covs: np.ndarray  # (K, 3, 3)

    @classmethod
    def from_cv(cls, model: np.ndarray) -> Mixture:
        m = model.ravel()
        return cls(m[:5].copy(), m[5:20].reshape(5, 3).copy(), m[20:65].reshape(5, 3, 3).copy())

    def log_components(self, feats: np.ndarray) -> np.ndarray:
        """(K, N) log(det^-½·exp(-½ Mahalanobis²)) per component; -inf for empty components."""
        weights = np.zeros((10, COMPONENTS))
        offset = np.full(COMPONENTS, -np.inf)
        for k in np.flatnonzero(self.coefs > 0):
            inv, mu = np.linalg.inv(self.covs[k]), self.means[k]
            # -½ (x-μ)ᵀA(x-μ) = -½ xᵀAx + (Aμ)ᵀx - ½ μᵀAμ, written on colour_features' columns
            weights[:, k] = -0.5 * np.array([inv[0, 0], inv[1, 1], inv[2, 2], 2 * inv[0, 1],
                                             2 * inv[0, 2], 2 * inv[1, 2], 0, 0, 0, 0])
            weights[6:9, k] = inv @ mu
            offset[k] = -0.5 * mu @ inv @ mu - 0.5 * np.log(np.linalg.det(self.covs[k]))
        # einsum, not @: a BLAS product of this shape starts threads, which on two busy cores
        # spend 10x the time waiting for each other.
        return np.einsum("fk,fn->kn", weights, feats) + offset[:, None]

    def neg_log(self, feats: np.ndarray) -> np.ndarray:
        """-log Σ_k coef_k·density_k per pixel: the cost of giving the pixel to this side."""
        return self.cost(self.log_components(feats))

    def cost(self, components: np.ndarray) -> np.ndarray:
        """neg_log from this mixture's log_components, where the caller has them already."""
        logs = components + np.log(np.where(self.coefs > 0, self.coefs, 1.0))[:, None]
        top = logs.max(0)
        # The exponentials in float32: their sum lies in [1, K], so the cost keeps ~1e-7 of its
        # precision, and they take half of float64's time.
        return -(top + np.log(np.exp((logs - top).astype(np.float32)).sum(0, dtype=np.float64)))

    @classmethod
    def fit(cls, feats: np.ndarray, component: np.ndarray) -> Mixture:
        """Weights, means and covariances of each component's samples (cv2.grabCut's learnGMMs)."""
        sums = np.stack([np.bincount(component, feats[j], COMPONENTS) for j in range(9)], axis=1)
        counts = np.bincount(component, minlength=COMPONENTS).astype(np.float64)
        coefs, means = counts / max(1.0, counts.sum()), np.zeros((COMPONENTS, 3))
        covs = np.tile(np.eye(3), (COMPONENTS, 1, 1))
        for k in np.flatnonzero(counts):
            mu = sums[k, 6:9] / counts[k]
            sq = sums[k, :6] / counts[k]
            cov = np.array([[sq[0], sq[3], sq[4]], [sq[3], sq[1], sq[5]], [sq[4], sq[5], sq[2]]]) - np.outer(mu, mu)
            if np.linalg.det(cov) <= np.finfo(float).eps:
                cov = cov + 0.01 * np.eye(3)  # a flat colour cluster: keep it invertible
            means[k], covs[k] = mu, cov
        return cls(coefs, means, covs)


def initial_models(bgr: np.ndarray, labels: np.ndarray) -> tuple[Mixture, Mixture]:
    """Background and object mixtures from cv2.grabCut's k-means initialisation of `labels`."""
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # its k-means draws from OpenCV's thread-local RNG: same photo, same models
    cv2.grabCut(bgr, labels.copy(), None, bgd, fgd, 0, cv2.GC_INIT_WITH_MASK)
    return Mixture.from_cv(bgd), Mixture.from_cv(fgd)


def relearn(feats: np.ndarray, is_fg: np.ndarray, bgd: Mixture, fgd: Mixture,
            components: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Mixture, Mixture]:
    """One GrabCut learning step: each pixel to its most likely component of its side's mixture,
    then both mixtures refitted. feats: colour_features of the pixels, is_fg (N,) bool;
    components: (bgd, fgd).log_components(feats) where the caller has them already (the last
    cut's costs came from them), which saves a third of an iteration's colour arithmetic."""
    fg_x, bg_x = feats[:, is_fg], feats[:, ~is_fg]
    if fg_x.shape[1] == 0 or bg_x.shape[1] == 0:
        return bgd, fgd
    bg_c, fg_c = ((bgd.log_components(bg_x), fgd.log_components(fg_x)) if components is None
                  else (components[0][:, ~is_fg], components[1][:, is_fg]))
    return Mixture.fit(bg_x, bg_c.argmax(0)), Mixture.fit(fg_x, fg_c.argmax(0))


def neighbour_weights(bgr: np.ndarray, gamma: float) -> list[np.ndarray]:
    """Four (H, W) planes of n-link weights, one per _OFFSETS entry, 0 where the neighbour is off
    the image; beta from the image's mean squared neighbour difference (as cv2.grabCut)."""
    z = np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.int32)  # channel planes, exact integers
    h, w = z.shape[1:]
    diffs, total = [], 0
    for dy, dx in _OFFSETS:
        ys, xs = slice(-dy, h), slice(max(0, -dx), w - max(0, dx))
        d = ((z[:, ys, xs] - z[:, ys.start + dy:h + dy, xs.start + dx:xs.stop + dx]) ** 2).sum(0)
        diffs.append((ys, xs, d))
        total += int(d.sum())
    pairs = 4 * w * h - 3 * w - 3 * h + 2
    beta = 0.0 if total <= np.finfo(float).eps else pairs / (2.0 * total)
    planes = []
    for (dy, dx), (ys, xs, d) in zip(_OFFSETS, diffs):
        p = np.zeros((h, w))
        p[ys, xs] = gamma / np.hypot(dy, dx) * np.exp(-beta * d)
        planes.append(p)
    return planes


class MinCut:
    """Minimum cuts over the pixels `free` (H,W bool) of one grid; every other pixel keeps its
    label in `labels` and pulls its free neighbours towards it.

    The graph is built once; each solve() sets new data costs and starts from the previous
    solve's flow (max-flow's residual graph stays valid when only terminal capacities change),
    so GrabCut's later iterations, whose costs move a little, cost a fraction of the first."""

    def __init__(self, labels: np.ndarray, planes: list[np.ndarray], free: np.ndarray):
        h, w = labels.shape
        self.free = free
        self.fixed_fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        ids = np.full((h, w), -1, np.int64)
        n = self.n = int(free.sum())
        ids[free] = np.arange(n)
        # Separating a free pixel from a fixed neighbour costs the link's weight, paid on the
        # free pixel's terminal link towards the neighbour's side.
        self.pull_src, self.pull_snk = np.zeros(n), np.zeros(n)
        ei, ej, ew = [], [], []
        for (dy, dx), plane in zip(_OFFSETS, planes):
            ys, xs = slice(-dy, h), slice(max(0, -dx), w - max(0, dx))
            ys2, xs2 = slice(ys.start + dy, h + dy), slice(xs.start + dx, xs.stop + dx)
            a, b, wt = ids[ys, xs], ids[ys2, xs2], plane[ys, xs]
            both = (a >= 0) & (b >= 0)
            ei.append(a[both]), ej.append(b[both]), ew.append(wt[both])
            for mine, other, other_fg in ((a, b, self.fixed_fg[ys2, xs2]), (b, a, self.fixed_fg[ys, xs])):
                one = (mine >= 0) & (other < 0)
                self.pull_src += np.bincount(mine[one & other_fg], wt[one & other_fg], n)
                self.pull_snk += np.bincount(mine[one & ~other_fg], wt[one & ~other_fg], n)
        ei, ej, ew = np.concatenate(ei), np.concatenate(ej), np.concatenate(ew)
        self.graph = maxflow.Graph[float](max(1, n), max(1, len(ei)))
        self.nodes = self.graph.add_nodes(n)
        self.graph.add_edges(self.nodes[ei], self.nodes[ej], ew, ew)
        self.costs = None

    def solve(self, src: np.ndarray, snk: np.ndarray) -> np.ndarray:
        """src/snk: (H,W) cost of each free pixel being background / object (read on `free`).
        Returns (H,W) bool, True = object."""
        out = self.fixed_fg.copy()
        if self.n == 0:
            return out
        costs = (src[self.free] + self.pull_src, snk[self.free] + self.pull_snk)
        if self.costs is None:
            add_src, add_snk = costs
        else:
            # Only the difference between the two capacities matters to the cut; lift both
            # changes by the same amount so neither is negative.
            add_src, add_snk = costs[0] - self.costs[0], costs[1] - self.costs[1]
            lift = np.maximum(0.0, -np.minimum(add_src, add_snk))
            add_src, add_snk = add_src + lift, add_snk + lift
        reuse = self.costs is not None
        self.costs = costs
        self.graph.add_grid_tedges(self.nodes, add_src, add_snk)
        if reuse:
            self.graph.mark_grid_nodes(self.nodes)
        self.graph.maxflow(reuse_trees=reuse)
        out[self.free] = ~self.graph.get_grid_segments(self.nodes)
        return out


def cut(labels: np.ndarray, src: np.ndarray, snk: np.ndarray, planes: list[np.ndarray],
        free: np.ndarray) -> np.ndarray:
    """One minimum cut (MinCut built and solved once)."""
    return MinCut(labels, planes, free).solve(src, snk)


def iterate(bgr: np.ndarray, labels: np.ndarray, gamma: float, iterations: int,
            stable_fraction: float, cpu_budget_s: float) -> tuple[np.ndarray, Mixture, Mixture, int]:
    """GrabCut's loop on the whole image: learn the mixtures from the current labelling, cut,
    repeat; stop after `iterations`, once fewer than stable_fraction of the pixels change, or
    once this thread has used cpu_budget_s of CPU time (checked between iterations, so the same
    input runs the same iterations however busy the machine is).

    labels: (H,W) cv2.GC_* seeds. Returns (object mask, background and object mixtures, the
    number of cuts made)."""
    started = time.thread_time()
    h, w = labels.shape
    bgd, fgd = initial_models(bgr, labels)
    planes = neighbour_weights(bgr, gamma)
    pixels = colour_features(bgr)
    free = (labels == cv2.GC_PR_BGD) | (labels == cv2.GC_PR_FGD)
    fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    done = 0
    mincut = MinCut(labels, planes, free)
    comps = (bgd.log_components(pixels), fgd.log_components(pixels))
    # The cut reads the costs of the undecided pixels only (a box leaves most of a photo decided).
    src, snk, cols = np.zeros((h, w)), np.zeros((h, w)), np.flatnonzero(free)
    for _ in range(iterations):
        bgd, fgd = relearn(pixels, fg.ravel(), bgd, fgd, comps)
        comps = (bgd.log_components(pixels), fgd.log_components(pixels))
        src[free], snk[free] = bgd.cost(comps[0][:, cols]), fgd.cost(comps[1][:, cols])
        new = mincut.solve(src, snk)
        done += 1
        stable = np.count_nonzero(new != fg) <= stable_fraction * new.size
        fg = new
        if stable or time.thread_time() - started > cpu_budget_s:
            break
    return fg, bgd, fgd, done


def refine_edge(bgr: np.ndarray, labels: np.ndarray, rough: np.ndarray, bgd: Mixture, fgd: Mixture,
                band: int, planes: list[np.ndarray]) -> np.ndarray:
    """Re-cut only the pixels within `band` of the edge of `rough` (an object mask from a coarser
    cut), with these mixtures and n-link planes; pixels outside the band keep the rough label, and
    the seeds' certain pixels (cv2.GC_BGD/FGD in labels) always keep theirs."""
    h, w = labels.shape
    maybe = (labels == cv2.GC_PR_BGD) | (labels == cv2.GC_PR_FGD)
    current = np.where(maybe, np.where(rough, cv2.GC_PR_FGD, cv2.GC_PR_BGD), labels).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * band + 1, 2 * band + 1))
    u8 = rough.astype(np.uint8)
    edge = (cv2.dilate(u8, kernel) != cv2.erode(u8, kernel)) & maybe
    src, snk = np.zeros((h, w)), np.zeros((h, w))
    x = colour_features(bgr[edge])
    src[edge], snk[edge] = bgd.neg_log(x), fgd.neg_log(x)
    return cut(current, src, snk, planes, edge)
