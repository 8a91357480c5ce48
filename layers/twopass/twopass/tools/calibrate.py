"""What ``twopass calibrate`` computes: the cascade's confidence threshold from both models' answers on your images.

Both models classify every image (and, with ``--augment``, crops, flips and rescaled views of it, each
re-encoded as JPEG so it takes the service's decode path). For each threshold the cascade would answer
with the fast model wherever its top-1 probability reaches the threshold, and with the slow model
elsewhere; the table shows, per threshold, the share of slow passes saved and how often the cascade's
answer is the slow model's top-1 (its *agreement*), and, with ``--labels-from-folders``, its accuracy
against the folder names. The recommendation is the lowest threshold whose agreement meets
``--target-agreement``: it saves the most slow passes at that quality. Everything is deterministic, so
the same images and models give the same output.

Running the models needs the server packages (numpy, onnxruntime, Pillow): ``pip install -e '.[serve]'``
in a clone. The command line (arguments, loading the packs, printing) is :mod:`twopass.cli.calibrate`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from twopass.models.runtime import Classifier

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
#: The slow model runs in batches of this many views.
BATCH = 8
#: The sweep's resolution: the recommendation is searched on this grid whatever the printed step.
FINE_STEP = 0.01


# -- the sweep (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """Both models' top-1 on one view of one image, and its label when the folder names one."""

    image: str
    view: str
    fast_class: int
    fast_label: str
    fast_probability: float
    slow_class: int
    slow_label: str
    truth: str | None = None


@dataclass(frozen=True)
class Row:
    """What the cascade does at one threshold."""

    threshold: float
    #: Views the fast answer would stand for: slow passes saved.
    answered_fast: int
    saved: float
    #: Share of views whose cascade answer is the slow model's top-1.
    agreement: float
    #: Share of labelled views the cascade answers correctly (``None`` without labels).
    accuracy: float | None


def normalise_label(text: str) -> str:
    """``Tiger_Cat`` and ``tiger-cat`` name the class ``tiger cat``."""
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def unknown_folders(files: Sequence[Path], labels: Sequence[str]) -> list[str]:
    """Parent folder names that match none of ``labels`` (compared as :func:`normalise_label` does)."""
    known = {normalise_label(label) for label in labels}
    return sorted({path.parent.name for path in files if normalise_label(path.parent.name) not in known})


def thresholds(step: float) -> list[float]:
    """``step``, ``2·step`` … 1.0 (0 is the cascade turned off, so it is no candidate)."""
    count = round(1.0 / step)
    return [round(i * step, 4) for i in range(1, count + 1)]


def row_at(observations: Sequence[Observation], threshold: float) -> Row:
    total = len(observations)
    fast = [o for o in observations if o.fast_probability >= threshold]
    # Where the slow model answers, the cascade agrees with it by definition.
    disagree = sum(1 for o in fast if o.fast_class != o.slow_class)
    labelled = [o for o in observations if o.truth is not None]
    accuracy = None
    if labelled:
        right = sum(
            1
            for o in labelled
            if normalise_label(o.fast_label if o.fast_probability >= threshold else o.slow_label) == o.truth
        )
        accuracy = right / len(labelled)
    return Row(
        threshold=threshold,
        answered_fast=len(fast),
        saved=len(fast) / total if total else 0.0,
        agreement=(total - disagree) / total if total else 1.0,
        accuracy=accuracy,
    )


def sweep(observations: Sequence[Observation], grid: Iterable[float]) -> list[Row]:
    return [row_at(observations, t) for t in grid]


def recommend(rows: Sequence[Row], target: float) -> Row | None:
    """The lowest threshold whose agreement meets ``target`` (the most slow passes saved), if any."""
    meeting = [r for r in rows if r.agreement >= target - 1e-12]
    return min(meeting, key=lambda r: r.threshold) if meeting else None


# -- images and views ---------------------------------------------------------------------------------


def collect(paths: Sequence[Path]) -> list[Path]:
    """Image files named or found under folders, sorted, each once."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.add(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(found)


def _crop(image: Image.Image, fraction: float, corner: str) -> Image.Image:
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    x = {"l": 0, "c": (w - cw) // 2, "r": w - cw}[corner[1]]
    y = {"t": 0, "c": (h - ch) // 2, "b": h - ch}[corner[0]]
    return image.crop((x, y, x + cw, y + ch))


def _scale(image: Image.Image, factor: float) -> Image.Image:
    from PIL import Image

    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)


def _flip(image: Image.Image) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.mirror(image)


#: The augmented views: the original, a mirror image, five crops, two smaller scales, a mirrored crop.
VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "flip": _flip,
    "crop-centre-80": lambda im: _crop(im, 0.8, "cc"),
    "crop-top-left-70": lambda im: _crop(im, 0.7, "tl"),
    "crop-top-right-70": lambda im: _crop(im, 0.7, "tr"),
    "crop-bottom-left-70": lambda im: _crop(im, 0.7, "bl"),
    "crop-bottom-right-70": lambda im: _crop(im, 0.7, "br"),
    "scale-50": lambda im: _scale(im, 0.5),
    "scale-25": lambda im: _scale(im, 0.25),
    "flip-crop-centre-60": lambda im: _crop(_flip(im), 0.6, "cc"),
}


def views(data: bytes, augment: bool) -> list[tuple[str, bytes]]:
    """``[("original", data), (name, JPEG bytes)…]``: each view re-encoded as the service would receive it."""
    out = [("original", data)]
    if not augment:
        return out
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    for name, make in VIEWS.items():
        buffer = io.BytesIO()
        make(image).save(buffer, format="JPEG", quality=90)
        out.append((name, buffer.getvalue()))
    return out


# -- running both models ------------------------------------------------------------------------------


def observe(
    files: Sequence[Path],
    fast: Classifier,
    slow: Classifier,
    *,
    augment: bool,
    labels_from_folders: bool,
    max_pixels: int,
    progress: Callable[[str], None] | None = None,
) -> list[Observation]:
    """Both models on every view of every file. Files that do not decode are reported and skipped."""
    pending: list[tuple[str, str, bytes, str | None]] = []
    for path in files:
        truth = normalise_label(path.parent.name) if labels_from_folders else None
        try:
            for view, data in views(path.read_bytes(), augment):
                pending.append((str(path), view, data, truth))
        except (OSError, ValueError) as exc:
            if progress:
                progress(f"skipped {path}: {exc}")
    observations: list[Observation] = []
    for start in range(0, len(pending), BATCH):
        chunk = pending[start : start + BATCH]
        decoded = []
        for name, view, data, truth in chunk:
            try:
                decoded.append(
                    (
                        name,
                        view,
                        fast.tensor(data, max_pixels=max_pixels),
                        slow.tensor(data, max_pixels=max_pixels),
                        truth,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - InvalidImageError or anything Pillow raises: skip the file
                if progress:
                    progress(f"skipped {name} ({view}): {exc}")
        if not decoded:
            continue
        fast_top = fast.predict_batch([d[2] for d in decoded])
        slow_top = slow.predict_batch([d[3] for d in decoded])
        for (name, view, _, _, truth), f, s in zip(decoded, fast_top, slow_top, strict=True):
            observations.append(
                Observation(
                    name, view, f.class_ids[0], f.label, round(f.probability, 6), s.class_ids[0], s.label, truth
                )
            )
        if progress:
            progress(f"{min(start + BATCH, len(pending))}/{len(pending)} views")
    return observations


@dataclass(frozen=True)
class Calibration:
    files: int
    target_agreement: float
    observations: list[Observation]
    rows: list[Row]
    recommended: Row | None
    fast_model: dict[str, str]
    slow_model: dict[str, str]

    def summary(self) -> dict[str, Any]:
        obs = self.observations
        labelled = [o for o in obs if o.truth is not None]
        out: dict[str, Any] = {
            "fast_slow_agreement": _share(sum(o.fast_class == o.slow_class for o in obs), len(obs)),
        }
        if labelled:
            out["fast_accuracy"] = _share(
                sum(normalise_label(o.fast_label) == o.truth for o in labelled), len(labelled)
            )
            out["slow_accuracy"] = _share(
                sum(normalise_label(o.slow_label) == o.truth for o in labelled), len(labelled)
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "fast_model": self.fast_model,
            "slow_model": self.slow_model,
            "files": self.files,
            "views": len(self.observations),
            "target_agreement": self.target_agreement,
            "recommended": None if self.recommended is None else _row_json(self.recommended),
            "overall": self.summary(),
            "thresholds": [_row_json(r) for r in self.rows],
            "observations": [asdict(o) for o in self.observations],
        }


def _share(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


def _row_json(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "threshold": row.threshold,
        "answered_fast": row.answered_fast,
        "saved": round(row.saved, 6),
        "agreement": round(row.agreement, 6),
    }
    if row.accuracy is not None:
        out["accuracy"] = round(row.accuracy, 6)
    return out


def calibrate(
    observations: list[Observation], files: int, target: float, fast: Classifier, slow: Classifier
) -> Calibration:
    rows = sweep(observations, thresholds(FINE_STEP))
    return Calibration(
        files=files,
        target_agreement=target,
        observations=observations,
        rows=rows,
        recommended=recommend(rows, target),
        fast_model={"name": fast.card.name, "version": fast.card.version},
        slow_model={"name": slow.card.name, "version": slow.card.version},
    )


# -- output -------------------------------------------------------------------------------------------


def report(result: Calibration, step: float) -> str:
    """The human-readable table, every ``step``, and the recommendation with how to deploy it."""
    labelled = any(o.truth is not None for o in result.observations)
    summary = result.summary()
    lines = [
        f"{result.files} image(s), {len(result.observations)} view(s); fast {result.fast_model['name']} "
        f"{result.fast_model['version']}, slow {result.slow_model['name']} {result.slow_model['version']}",
        f"fast top-1 = slow top-1 on {summary['fast_slow_agreement']:.1%} of views"
        + (
            f"; accuracy against folder names: fast {summary['fast_accuracy']:.1%}, slow {summary['slow_accuracy']:.1%}"
            if labelled
            else ""
        ),
        "",
        "threshold  answered fast  slow passes saved  agreement" + ("  accuracy" if labelled else ""),
    ]
    shown = {round(t, 4) for t in thresholds(step)}
    best = result.recommended
    for row in result.rows:
        if row.threshold not in shown and row is not best:
            continue
        mark = "  <- recommended" if row is best else ""
        acc = f"  {row.accuracy:8.1%}" if row.accuracy is not None else ""
        lines.append(
            f"{row.threshold:9.2f}  {row.answered_fast:13d}  {row.saved:17.1%}  {row.agreement:9.1%}{acc}{mark}"
        )
    lines.append("")
    if best is None:
        lines.append(
            f"No threshold reaches {result.target_agreement:.1%} agreement on these images: keep the cascade off "
            "(CascadeThreshold=0)."
        )
    else:
        lines += [
            f"Recommended threshold: {best.threshold:.2f} (the lowest with agreement >= {result.target_agreement:.1%}):"
            f" saves {best.saved:.1%} of slow passes at {best.agreement:.1%} agreement.",
            f"Deploy it: add CascadeThreshold={best.threshold:.2f} to parameter_overrides in samconfig.toml "
            f"(or TWOPASS_CASCADE_THRESHOLD={best.threshold:.2f} locally).",
        ]
    return "\n".join(lines)


def plot(result: Calibration, path: Path) -> None:
    """A PNG of saved share, agreement (and accuracy) against the threshold, drawn with Pillow."""
    from PIL import Image, ImageDraw

    width, height, margin = 900, 560, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = margin, height - margin, width - margin // 2, margin // 2

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * x, y0 - (y0 - y1) * y

    for tick in range(11):
        v = tick / 10
        draw.line([at(v, 0), at(v, 1)], fill=(232, 232, 232))
        draw.line([at(0, v), at(1, v)], fill=(232, 232, 232))
        draw.text((at(v, 0)[0] - 8, y0 + 8), f"{v:.1f}", fill="black")
        draw.text((x0 - 40, at(0, v)[1] - 6), f"{v:.0%}", fill="black")
    draw.rectangle([x0, y1, x1, y0], outline="black")
    draw.text(((x0 + x1) / 2 - 90, height - 28), "threshold (fast top-1 probability)", fill="black")
    target = result.target_agreement
    for x in range(0, 100, 2):  # dashed target line
        draw.line([at(x / 100, target), at((x + 1) / 100, target)], fill=(120, 120, 120))
    series: list[tuple[str, tuple[int, int, int], list[float | None]]] = [
        ("slow passes saved", (31, 119, 180), [r.saved for r in result.rows]),
        ("agreement with slow top-1", (44, 160, 44), [r.agreement for r in result.rows]),
    ]
    if any(r.accuracy is not None for r in result.rows):
        series.append(("accuracy (folder labels)", (255, 127, 14), [r.accuracy for r in result.rows]))
    for _, colour, values in series:
        points = [at(r.threshold, v) for r, v in zip(result.rows, values, strict=True) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
    # The legend in a box where the curves are usually apart: right of centre, below the top.
    lx, ly = at(0.6, 0.8)
    rows = len(series) + 1
    draw.rectangle([lx, ly, lx + 250, ly + 18 * rows + 10], fill="white", outline=(160, 160, 160))
    for i, (name, colour, _) in enumerate(series):
        y = ly + 12 + 18 * i
        draw.line([(lx + 8, y), (lx + 36, y)], fill=colour, width=3)
        draw.text((lx + 42, y - 6), name, fill="black")
    draw.text((lx + 42, ly + 6 + 18 * len(series)), f"target agreement {target:.1%} (dashed)", fill="black")
    if result.recommended is not None:
        best = result.recommended
        draw.line([at(best.threshold, 0), at(best.threshold, 1)], fill=(214, 39, 40), width=2)
        draw.text((at(best.threshold, 1)[0] + 4, y1 + 4), f"recommended {best.threshold:.2f}", fill=(214, 39, 40))
    image.save(path, format="PNG")
