"""Pathfinder (Linsley et al. 2018; Kim et al. 2020) as Long Range Arena uses it: a generator, and a writer of
the LRA release layout.

An example is an R x R grayscale image (R = 32 for LRA's ``pathfinder``, 128 for ``pathx``), black background,
with white paths drawn as dashes (short strokes separated by gaps) and two markers (filled discs, brighter and
wider than a dash). Label 1: one path joins the two markers; label 0: each marker sits at the end of a
different path. Every image holds two target paths of ``contour_length`` dashes, grown from two seeds
``seed_distance`` apart as Linsley's ``snakes2.py`` does, whatever the label: the markers sit at the start of
one of them and at the end of the same one (label 1) or of the other (label 0); plus distractor paths of
``contour_length // 3`` dashes that touch neither. Each dash continues the previous one's heading with a
random turn drawn as Linsley draws it (weight ``cos(min(|turn| * continuity, pi/2))^2`` among the headings
that fit; ``continuity`` 1 at 32 px, 1.8 at 128 px as in LRA's builder notes), so paths are smooth curves;
a path that runs into a dead end takes back its last dashes and tries other headings.

Difficulty is the number of dashes per path, as in the release's folders: ``curv_baseline`` (6),
``curv_contour_length_9`` and ``curv_contour_length_14``; LRA reports ``pathfinder32_hard`` (14 dashes), and
its Path-X is 128 x 128 at 14; that is our default.

**Connectivity is exact by construction**, and a reader can check it from the pixels alone. With the link
distance D = ``gap + 1`` (2 at 32 px, 3 at 128 px), measured in Chebyshev distance between lit pixels:

- consecutive dashes of a path are at distance exactly D at their facing ends, and no pixel of a dash touches
  (is within 1 of) another pixel of its path: the gaps stay visible and a path never runs into itself (it
  may pass within D of itself, which only links it to itself);
- two different paths are further than D apart everywhere (the markers' discs count as part of their path;
  a dash that would come closer is not drawn there).

So linking lit pixels within distance D (equivalently: dilating the paths enough to bridge the gaps but not
the clearance, then flood-filling) joins exactly the pixels of one path, and the two markers are linked iff
the label is 1. Linsley's renderer does not guarantee this (its anti-aliased paddles may touch); ours draws
hard-edged pixels: dashes at ``dash_value`` (192 by default), markers at 255.

Geometry per resolution (:data:`GEOMETRY`), from the LRA builder's notes on how the release was generated
(``lra_benchmarks/data/pathfinder.py``: paddle length 2, margin 1, marker radius 1.5, seed distance 7 at
32 px; margin 2-3, thickness 1.5, marker radius 3, seed distance 20 at 128 px; ``num_distractor_snakes =
K // distractor_length`` with K = 20 at 32 px, 35 at 128 px). Linsley's single-paddle clutter is not drawn.

Files (:func:`write_pathfinder_release`), as in ``lra_release``::

    <folder>/pathfinder{R}/{difficulty}/imgs/{k}/sample_{j}.png      8-bit grayscale PNG
    <folder>/pathfinder{R}/{difficulty}/metadata/{k}.npy             text despite the name: one line per image,
        "imgs/{k} sample_{j}.png {j} {label} {continuity} {contour_length} {distractor_length} {dash_length}
         {thickness} {gap} 1"   (LRA's reader uses columns 0 and 1 for the path, column 3 for the label)
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from .listops import _check, _check_int  # the same argument checks as the ListOps generator

DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
DIFFICULTY_ALIASES = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}
MARKER_VALUE = 255


@dataclass(frozen=True)
class PathfinderGeometry:
    """How paths are drawn at one resolution (pixels)."""

    dash_length: float  # centre-line length of a dash
    gap: int  # empty pixels between consecutive dashes, along the heading's major axis
    thickness: float  # 1: one-pixel strokes; more: pixels within thickness/2 of the centre line
    marker_radius: float
    seed_distance: int  # distance between the two target paths' starts
    padding: int  # pixels kept free along the border
    distractor_budget: int  # number of distractors = distractor_budget // distractor_length
    continuity: float  # Linsley's turn law: turns up to 90 / continuity degrees, weighted cos^2

    @property
    def link_distance(self) -> int:
        return self.gap + 1


GEOMETRY: dict[int, PathfinderGeometry] = {
    32: PathfinderGeometry(2.0, 1, 1.0, 1.5, 7, 1, 20, 1.0),
    64: PathfinderGeometry(3.0, 1, 1.0, 2.5, 12, 1, 22, 1.8),
    128: PathfinderGeometry(5.0, 2, 1.5, 3.0, 20, 1, 35, 1.8),
    256: PathfinderGeometry(10.0, 3, 2.0, 5.0, 40, 1, 30, 1.8),
}

_N_BINS = 360  # headings are rounded to whole degrees for the stencils


def _round(v: float) -> int:
    return math.floor(v + 0.5)


# -- stencils: pixel offsets per heading, precomputed once per resolution ---------------------------------


@dataclass
class _Stencils:
    R: int
    W: int  # padded canvas width (no bounds checks when dilating)
    M: int  # padding of the canvas on each side
    D: int
    pad: int
    pix: list  # per bin: [(dy, dx)] of the dash's pixels, start at (0, 0)
    pix_off: list  # per bin: flat offsets of those pixels
    halo_off: list  # per bin: flat offsets of every cell within D of the dash
    touch_off: list  # per bin: flat offsets of every cell within 1 of the dash
    bbox: list  # per bin: (min dy, max dy, min dx, max dx)
    end: list  # per bin: (dy, dx) of the dash's far end
    step: list  # per bin: (dy, dx) from the previous dash's end to this dash's start: Chebyshev length D
    pattern: list  # per bin: an id shared by the bins that draw the same dash at the same step and end
    disc: list  # [(dy, dx)] of a marker centred at (0, 0)
    disc_off: list
    disc_halo_off: list
    disc_touch_off: list
    disc_box: tuple


def _dilate(points: set, r: int) -> set:
    return {(y + dy, x + dx) for y, x in points for dy in range(-r, r + 1) for dx in range(-r, r + 1)}


def _dash_pixels(length: float, thickness: float, theta: float) -> set:
    uy, ux = math.sin(theta), math.cos(theta)
    pts = {(0, 0), (_round(length * uy), _round(length * ux))}
    n = int(math.ceil(length * 4)) + 1
    for k in range(n):
        t = length * k / (n - 1)
        pts.add((_round(t * uy), _round(t * ux)))
    if thickness > 1.0:
        # Flat-capped stroke: pixels beside the centre line, none past its ends (that would eat the gap).
        half = thickness / 2
        span = int(math.ceil(length + half)) + 1
        for dy in range(-span, span + 1):
            for dx in range(-span, span + 1):
                along = dy * uy + dx * ux
                across = abs(dx * uy - dy * ux)
                if -1e-9 <= along <= length + 1e-9 and across <= half + 1e-9:
                    pts.add((dy, dx))
    return pts


@cache
def _stencils(resolution: int) -> _Stencils:
    g = GEOMETRY[resolution]
    D = g.link_distance
    disc_r = int(math.floor(g.marker_radius))
    M = D + disc_r + 2
    W = resolution + 2 * M

    def flat(points) -> list:
        return [dy * W + dx for dy, dx in sorted(points)]

    pix, pix_off, halo_off, touch_off, bbox, end, step = [], [], [], [], [], [], []
    for b in range(_N_BINS):
        theta = 2 * math.pi * b / _N_BINS
        pts = _dash_pixels(g.dash_length, g.thickness, theta)
        uy, ux = math.sin(theta), math.cos(theta)
        major = max(abs(uy), abs(ux))
        pix.append(sorted(pts))
        pix_off.append(flat(pts))
        halo_off.append(flat(_dilate(pts, D)))
        touch_off.append(flat(_dilate(pts, 1)))
        ys, xs = [p[0] for p in pts], [p[1] for p in pts]
        bbox.append((min(ys), max(ys), min(xs), max(xs)))
        end.append((_round(g.dash_length * uy), _round(g.dash_length * ux)))
        # Normalised so that the major axis moves exactly D: the facing ends of two dashes are D apart.
        step.append((_round(D * uy / major), _round(D * ux / major)))
    ids: dict = {}
    pattern = [ids.setdefault((tuple(pix[b]), step[b], end[b]), len(ids)) for b in range(_N_BINS)]
    r2 = g.marker_radius**2
    disc = {
        (dy, dx)
        for dy in range(-disc_r, disc_r + 1)
        for dx in range(-disc_r, disc_r + 1)
        if dy * dy + dx * dx <= r2
    }
    return _Stencils(
        R=resolution,
        W=W,
        M=M,
        D=D,
        pad=g.padding,
        pix=pix,
        pix_off=pix_off,
        halo_off=halo_off,
        touch_off=touch_off,
        bbox=bbox,
        end=end,
        step=step,
        pattern=pattern,
        disc=sorted(disc),
        disc_off=flat(disc),
        disc_halo_off=flat(_dilate(disc, D)),
        disc_touch_off=flat(_dilate(disc, 1)),
        disc_box=(-disc_r, disc_r, -disc_r, disc_r),
    )


# -- one image ---------------------------------------------------------------------------------------------


class _Path:
    """One path while it grows: the cells within D of it (``own``: cell -> index of its first dash that
    close, so that taking back a dash frees exactly the cells it reserved), its pixels (``lit``: cell ->
    dash), its dashes, and its search state."""

    __slots__ = (
        "id",
        "n_dashes",
        "markers",
        "own",
        "lit",
        "dashes",
        "options",
        "tip",
        "budget",
        "fails",
        "other",
    )

    def __init__(self, path_id: int, y: int, x: int, n_dashes: int, markers: bool, budget: int):
        self.id, self.n_dashes, self.markers = path_id, n_dashes, markers
        self.own: dict[int, int] = {}
        self.lit: dict[int, int] = {}
        self.dashes: list = []  # (y, x, bin, tip before it, [(cell, halo offsets)] it reserved, its lit cells)
        self.options: list = []  # per level: the untried headings of the dash being placed there
        self.tip = (y, x, None)  # where the next dash starts from, and the heading it turns from
        self.budget = budget
        self.fails = 0
        self.other: dict | None = None  # the ``own`` record of the path growing beside it, if any


class _Canvas:
    """The occupancy of one image while its paths grow.

    ``frozen``: cells within D of a finished path. Paths that grow at the same time (the two targets) keep
    their own records, so that each can take back its own dashes without touching the other's."""

    def __init__(self, st: _Stencils):
        self.st = st
        self.frozen = bytearray(st.W * st.W)
        self.finished: list[_Path] = []

    def _free(self, path: _Path, y: int, x: int, box, offsets) -> bool:
        """Inside the image (less its padding), and no cell within reach of another path."""
        st = self.st
        lo, hi = st.pad, st.R - 1 - st.pad
        if not (lo <= y + box[0] and y + box[1] <= hi and lo <= x + box[2] and x + box[3] <= hi):
            return False
        frozen, other = self.frozen, path.other
        s = (y + st.M) * st.W + (x + st.M)
        if other is None:
            for o in offsets:
                if frozen[s + o]:
                    return False
        else:
            for o in offsets:
                c = s + o
                if frozen[c] or c in other:
                    return False
        return True

    def try_dash(self, path: _Path, y: int, x: int, b: int) -> bool:
        """Draw the next dash of ``path`` from (y, x) with heading bin b if it keeps every rule; the marker
        discs at a target path's two ends are reserved with its first and last dash."""
        st = self.st
        dash = len(path.dashes)
        if not self._free(path, y, x, st.bbox[b], st.pix_off[b]):
            return False
        s = (y + st.M) * st.W + (x + st.M)
        # No pixel may touch one of the path's own (the previous dash: the gap stays visible; the others:
        # the path does not run into itself; a path may pass within D of itself, which links it to itself).
        lit = path.lit
        for o in st.touch_off[b]:
            if s + o in lit:
                return False
        reserved = [(s, st.halo_off[b])]
        lit_cells = [s + o for o in st.pix_off[b]]
        # A marker disc is drawn over its dash; like a dash, it touches no other pixel of its path (the
        # start disc is recorded as pixels of dash 0), so the two markers of a label-1 image never merge.
        if path.markers and dash == 0:
            if not self._free(path, y, x, st.disc_box, st.disc_off):
                return False
            reserved.append((s, st.disc_halo_off))
            lit_cells += [s + o for o in st.disc_off]
        if path.markers and dash == path.n_dashes - 1:
            ey, ex = y + st.end[b][0], x + st.end[b][1]
            if not self._free(path, ey, ex, st.disc_box, st.disc_off):
                return False
            e = (ey + st.M) * st.W + (ex + st.M)
            for o in st.disc_touch_off:
                if e + o in lit:
                    return False
            reserved.append((e, st.disc_halo_off))
            lit_cells += [e + o for o in st.disc_off]
        own = path.own
        for c0, offsets in reserved:
            for o in offsets:
                if c0 + o not in own:
                    own[c0 + o] = dash
        for c in lit_cells:
            lit[c] = dash
        path.dashes.append((y, x, b, path.tip, reserved, lit_cells))
        return True

    def undo_last(self, path: _Path) -> None:
        """Take back the path's last dash (its own records only: cells it reached first, its pixels)."""
        y, x, b, tip, reserved, lit_cells = path.dashes.pop()
        dash = len(path.dashes)
        own = path.own
        for c0, offsets in reserved:
            for o in offsets:
                if own.get(c0 + o) == dash:
                    del own[c0 + o]
        lit = path.lit
        for c in lit_cells:
            lit.pop(c, None)  # a disc overlaps its dash's pixels
        path.tip = tip

    def freeze(self, path: _Path) -> None:
        frozen = self.frozen
        for c in path.own:
            frozen[c] = 1
        self.finished.append(path)

    def is_free(self, y: int, x: int) -> bool:
        """No finished path within reach of pixel (y, x): a distractor may start there."""
        return not self.frozen[(y + self.st.M) * self.st.W + (x + self.st.M)]

    def render(self, dash_value: int, markers) -> np.ndarray:
        st = self.st
        img = np.zeros((st.R, st.R), dtype=np.uint8)
        for path in self.finished:
            for y, x, b, *_ in path.dashes:
                for dy, dx in st.pix[b]:
                    img[y + dy, x + dx] = dash_value
        for y, x in markers:
            for dy, dx in st.disc:
                img[y + dy, x + dx] = MARKER_VALUE
        return img


class _Grower:
    """Grows paths a dash at a time, depth first.

    Each dash tries the headings open to it in a random order weighted as Linsley's generator weights them
    (a turn of delta from the previous heading: cos(min(|delta| * continuity, pi/2))^2, so at most 90
    degrees with continuity 1); a dash with no free heading takes back the path's previous dash, which
    then tries its next heading. A path gives up after ``budget`` tries per dash."""

    _TURN_STEP = math.radians(5)
    _N_ORDERS = 64

    def __init__(self, rng: random.Random, st: _Stencils, continuity: float):
        self.rng, self.st = rng, st
        k = int(math.pi / 2 / continuity / self._TURN_STEP)
        turns = [
            (j * self._TURN_STEP, math.cos(j * self._TURN_STEP * continuity) ** 2) for j in range(-k, k + 1)
        ]
        turns = [(d, w) for d, w in turns if w > 1e-6]
        # Weighted random orders of the turns (Efraimidis-Spirakis keys u^(1/w)), drawn once: a dash takes
        # one of them at random, plus a jitter, instead of drawing a fresh order every time.
        self.orders = []
        for _ in range(self._N_ORDERS):
            keyed = sorted(((rng.random() ** (1.0 / w), d) for d, w in turns), reverse=True)
            self.orders.append([d for _, d in keyed])

    def _headings(self, heading: float | None):
        """Yield (heading, bin) to try in turn, one per distinct dash (at 32 px many headings draw the same
        dash); lazily, as most dashes take the first."""
        rng = self.rng
        if heading is None:  # a path's first dash: any direction
            base = rng.random() * 2 * math.pi
            thetas = [base + j * (2 * math.pi / 24) for j in range(24)]
        else:
            heading += (rng.random() - 0.5) * self._TURN_STEP
            thetas = [heading + d for d in self.orders[int(rng.random() * self._N_ORDERS)]]
        pattern, per_rad = self.st.pattern, _N_BINS / (2 * math.pi)
        seen = set()
        for theta in thetas:
            theta %= 2 * math.pi
            b = int(theta * per_rad + 0.5) % _N_BINS
            if pattern[b] not in seen:
                seen.add(pattern[b])
                yield theta, b

    def advance(self, canvas: _Canvas, path: _Path, length: int) -> bool:
        """Grow ``path`` to ``length`` dashes (going back as needed); False when it cannot."""
        st = self.st
        while len(path.dashes) < length:
            i = len(path.dashes)
            if len(path.options) == i:  # entering level i
                path.options.append(self._headings(path.tip[2]))
            ty, tx, _ = path.tip
            placed = False
            for theta, b in path.options[i]:
                path.budget -= 1
                if path.budget < 0:
                    return False
                if i == 0:
                    sy, sx = ty, tx
                else:
                    sy, sx = ty + st.step[b][0], tx + st.step[b][1]
                if canvas.try_dash(path, sy, sx, b):
                    path.tip = (sy + st.end[b][0], sx + st.end[b][1], theta)
                    placed = True
                    break
            if not placed:
                # Dead end. Going back one dash at a time explores every heading of the last few dashes
                # (exponential in the depth of the trap: a path against the border), so each dead end of
                # the path goes back further: 1, 1, 2, 2, 3, ... dashes; the dash it returns to tries its
                # next heading, the ones after it start afresh.
                if i == 0:
                    path.options.pop()
                    return False
                path.fails += 1
                back = min(i, 1 + (path.fails - 1) // 2)
                del path.options[i - back + 1 :]
                for _ in range(back):
                    canvas.undo_last(path)
        return True


def _one_image(rng, st, g, grower, contour_length, distractor_length, num_distractors, dash_value, label):
    R = st.R
    inner = min(2 * g.seed_distance, R // 2 - 2)
    for _attempt in range(200):
        canvas = _Canvas(st)
        # Two target paths from seeds seed_distance apart, the first away from the border (Linsley keeps it
        # 2 * seed_distance from the border, which at 32 px is near the centre), grown a dash each in turn.
        y0, x0 = rng.randint(inner, R - 1 - inner), rng.randint(inner, R - 1 - inner)
        phi = rng.random() * 2 * math.pi
        y1 = y0 + _round(g.seed_distance * math.sin(phi))
        x1 = x0 + _round(g.seed_distance * math.cos(phi))
        budget = 40 * contour_length
        targets = [
            _Path(1, y0, x0, contour_length, True, budget),
            _Path(2, y1, x1, contour_length, True, budget),
        ]
        targets[0].other, targets[1].other = targets[1].own, targets[0].own
        if not all(grower.advance(canvas, t, n) for n in range(1, contour_length + 1) for t in targets):
            continue
        for t in targets:
            canvas.freeze(t)
        # Distractors: each kept only if it grows to full length; fewer when space runs out.
        placed = 0
        for _ in range(3 * num_distractors):
            if placed == num_distractors:
                break
            y, x = rng.randint(st.pad, R - 1 - st.pad), rng.randint(st.pad, R - 1 - st.pad)
            if not canvas.is_free(y, x):
                continue
            d = _Path(3 + placed, y, x, distractor_length, False, 4 * distractor_length)
            if grower.advance(canvas, d, distractor_length):
                canvas.freeze(d)
                placed += 1
        # Markers: the start of one target path, and the end of the same one (label 1) or of the other.
        origin = rng.randint(0, 1)
        terminal = origin if label == 1 else 1 - origin
        y, x = targets[origin].dashes[0][:2]
        ty, tx, tb = targets[terminal].dashes[-1][:3]
        markers = [(y, x), (ty + st.end[tb][0], tx + st.end[tb][1])]
        return canvas.render(dash_value, markers)
    raise RuntimeError(
        f"could not draw two paths of {contour_length} dashes in a {R} x {R} image after 200 attempts: "
        f"lower contour_length"
    )


def generate_pathfinder(
    num_examples: int,
    *,
    resolution: int = 32,
    contour_length: int = 14,
    num_distractors: int | None = None,
    distractor_length: int | None = None,
    continuity: float | None = None,
    dash_value: int = 192,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``num_examples`` Pathfinder images: ``(images uint8 [N, R, R], labels int64 [N])``.

    Labels are balanced (exactly half of each, in a shuffled order; N odd: one more 0). ``contour_length``:
    dashes per target path (6, 9, 14: LRA's three difficulties). ``distractor_length`` defaults to
    ``contour_length // 3`` and ``num_distractors`` to the LRA builder's ``K // distractor_length`` (K: 20 at
    32 px, 35 at 128 px; fewer when the image has no room left). ``continuity``: Linsley's turn law (default
    per resolution, :data:`GEOMETRY`); ``dash_value``: the gray level of the dashes (markers are 255).
    Deterministic from ``seed`` (its own ``random.Random``). About 3 ms an image at 32 px with 14 dashes
    (1.5 ms with 6), 10 ms at 128 px, on one CPU core."""
    _check_int("num_examples", num_examples, 0)
    _check(
        resolution in GEOMETRY,
        f"resolution must be one of {sorted(GEOMETRY)} (LRA's Pathfinder sizes), got {resolution!r}",
    )
    _check_int("contour_length", contour_length, 3)
    g = GEOMETRY[resolution]
    if distractor_length is None:
        distractor_length = max(1, contour_length // 3)
    _check_int("distractor_length", distractor_length, 1)
    if num_distractors is None:
        num_distractors = g.distractor_budget // distractor_length
    _check_int("num_distractors", num_distractors, 0)
    if continuity is None:
        continuity = g.continuity
    _check(
        isinstance(continuity, (int, float)) and continuity >= 1,
        f"continuity must be a number >= 1 (turns of at most 90 / continuity degrees), got {continuity!r}",
    )
    _check_int("dash_value", dash_value, 1)
    _check(
        dash_value < MARKER_VALUE,
        f"dash_value must be < {MARKER_VALUE} (the markers' value), got {dash_value}",
    )
    st = _stencils(resolution)
    rng = random.Random(seed)
    labels = [i % 2 for i in range(num_examples)]  # N odd: one more 0
    rng.shuffle(labels)
    images = np.zeros((num_examples, resolution, resolution), dtype=np.uint8)
    iterator = range(num_examples)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"pathfinder{resolution}", unit="img")
    grower = _Grower(rng, st, continuity)
    for n in iterator:
        images[n] = _one_image(
            rng, st, g, grower, contour_length, distractor_length, num_distractors, dash_value, labels[n]
        )
    return images, np.asarray(labels, dtype=np.int64)


# -- the release layout ------------------------------------------------------------------------------------


def resolve_difficulty(difficulty: str | None, contour_length: int | None) -> tuple[str, int]:
    """(folder name, contour length) from either or both; ValueError when they disagree."""
    if difficulty is not None:
        _check(isinstance(difficulty, str), f"difficulty must be a string, got {difficulty!r}")
        difficulty = DIFFICULTY_ALIASES.get(difficulty, difficulty)
        if difficulty in DIFFICULTIES:
            implied = DIFFICULTIES[difficulty]
        elif difficulty.startswith("curv_contour_length_") and difficulty.rsplit("_", 1)[1].isdigit():
            implied = int(difficulty.rsplit("_", 1)[1])
        else:
            raise ValueError(
                f"difficulty must be one of {sorted(DIFFICULTIES)} (or easy/intermediate/hard, or "
                f"curv_contour_length_N), got {difficulty!r}"
            )
        if contour_length is not None and contour_length != implied:
            raise ValueError(f"difficulty {difficulty!r} has contour_length {implied}, not {contour_length}")
        return difficulty, implied
    if contour_length is None:
        contour_length = 14
    _check_int("contour_length", contour_length, 3)
    name = {v: k for k, v in DIFFICULTIES.items()}.get(
        contour_length, f"curv_contour_length_{contour_length}"
    )
    return name, contour_length


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0x50415448, chunk]).generate_state(1, np.uint64)[0])


def _pil_image():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("writing and reading Pathfinder PNGs needs Pillow: pip install pillow") from e
    return Image


def write_pathfinder_release(
    folder: str | os.PathLike,
    *,
    resolution: int = 32,
    difficulty_name: str | None = None,
    difficulty: str | None = None,
    num_examples: int = 200_000,
    seed: int = 0,
    images_per_folder: int = 1000,
    contour_length: int | None = None,
    progress: bool | None = None,
    **generator_kwargs,
) -> Path:
    """Write ``num_examples`` images in the LRA release layout (module docstring) under
    ``folder/pathfinder{R}/{difficulty}``, and return that folder.

    ``difficulty`` (or ``difficulty_name``): ``curv_baseline``, ``curv_contour_length_9``,
    ``curv_contour_length_14`` (or easy / intermediate / hard); or give ``contour_length`` and the folder is
    named after it (default 14: ``curv_contour_length_14``). Images go ``images_per_folder`` to a subfolder
    ``imgs/{k}``, each drawn from its own seed, and ``metadata/{k}.npy`` is written last (atomically): an
    interrupted run resumes where it stopped when called again with the same arguments (recorded in
    ``generator.json``; different arguments on the same folder raise ValueError). LRA's release has 200,000
    images per difficulty. ``generator_kwargs`` go to :func:`generate_pathfinder`."""
    _check(
        difficulty is None or difficulty_name is None or difficulty == difficulty_name,
        f"difficulty {difficulty!r} and difficulty_name {difficulty_name!r} disagree",
    )
    name, contour_length = resolve_difficulty(
        difficulty if difficulty is not None else difficulty_name, contour_length
    )
    _check_int("num_examples", num_examples, 0)
    _check_int("images_per_folder", images_per_folder, 1)
    _check(
        resolution in GEOMETRY,
        f"resolution must be one of {sorted(GEOMETRY)} (LRA's Pathfinder sizes), got {resolution!r}",
    )
    allowed = {"num_distractors", "distractor_length", "continuity", "dash_value"}
    unknown = set(generator_kwargs) - allowed
    _check(
        not unknown, f"unknown Pathfinder generator arguments {sorted(unknown)} (known: {sorted(allowed)})"
    )
    Image = _pil_image()
    root = Path(folder) / f"pathfinder{resolution}" / name
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    record = {
        "resolution": resolution,
        "difficulty": name,
        "contour_length": contour_length,
        "num_examples": num_examples,
        "seed": int(seed),
        "images_per_folder": images_per_folder,
        "generator": dict(sorted(generator_kwargs.items())),
        "geometry": asdict(GEOMETRY[resolution]),
    }
    record_path = root / "generator.json"
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        if old != record:
            raise ValueError(
                f"{root} holds Pathfinder data generated with other arguments ({record_path}: {old}); "
                f"write to another folder or delete it"
            )
    else:
        tmp = record_path.with_name(record_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, record_path)
    g = GEOMETRY[resolution]
    distractor_length = generator_kwargs.get("distractor_length") or max(1, contour_length // 3)
    continuity = generator_kwargs.get("continuity") or g.continuity
    n_chunks = -(-num_examples // images_per_folder)
    if progress is None:
        progress = num_examples >= 5_000
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_examples, desc=f"pathfinder{resolution}/{name}", unit="img")
    try:
        for k in range(n_chunks):
            n = min(images_per_folder, num_examples - k * images_per_folder)
            meta_path = root / "metadata" / f"{k}.npy"
            if meta_path.is_file():  # written last: the folder is complete
                if bar is not None:
                    bar.update(n)
                continue
            images, labels = generate_pathfinder(
                n,
                resolution=resolution,
                contour_length=contour_length,
                seed=_chunk_seed(seed, k),
                **generator_kwargs,
            )
            sub = f"imgs/{k}"
            (root / sub).mkdir(parents=True, exist_ok=True)
            lines = []
            for j in range(n):
                Image.fromarray(images[j]).save(root / sub / f"sample_{j}.png")  # uint8 [R, R]: mode "L"
                lines.append(
                    f"{sub} sample_{j}.png {j} {int(labels[j])} {continuity} {contour_length} {distractor_length} "
                    f"{g.dash_length} {g.thickness} {g.gap} 1\n"
                )
                if bar is not None:
                    bar.update(1)
            tmp = meta_path.with_name(meta_path.name + ".tmp")
            tmp.write_text("".join(lines))
            os.replace(tmp, meta_path)
    finally:
        if bar is not None:
            bar.close()
    return root
