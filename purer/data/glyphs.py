"""``glyphs``: a few-shot character dataset rendered offline from the fonts bundled with matplotlib.

The embedded default dataset: it needs no download and is rebuilt byte-identically from the same
matplotlib fonts, Pillow and torch versions. Like Omniglot, a class is one character and an
instance is one drawing of it:

* **faces**: the 16 DejaVu Sans / Sans Mono / Serif and STIX General faces (regular, bold, italic,
  bold italic) in ``matplotlib.get_data_path()/fonts/ttf``;
* **candidate characters**: base letters and symbols of many scripts (Unicode categories Lu, Ll, Lt,
  Lo, Sm, So, Sc; no precomposed accented forms, no box drawing) present in the character map of at
  least 12 of the 16 faces (about 1,000);
* **classes**: the candidates in code-point order are permuted with a fixed seed
  (``derive_seed(0, "glyphs", "classes")``) and taken in that order, skipping any character whose
  shape (scale-normalised, in DejaVu Sans) is too close to one already taken (so ``l``/``I``/``|``
  or Latin ``A``/Greek ``Α`` never become two classes). The first ``train_classes`` go to train,
  the next ``val_classes`` to val, the next ``test_classes`` to test: disjoint, and the train
  classes do not change when val/test sizes do;
* **instances**: image ``i`` of a class uses the ``i mod F``-th face that has the character, scaled
  to fill 70% of a canvas 4x the output size, with a random affine (rotation +-15 deg, scale
  0.8-1.05, aspect +-10%, shear +-0.25, shift +-8%), stroke thinning/thickening (min/max filter),
  then a box-filter downscale and Gaussian pixel noise (sigma up to 0.08). Each class has its own
  generator (``make_generator(0, "glyphs", "instances", codepoint)``). White ink on black.

Greyscale (``channels`` null or 1; 3 replicates the channel). Normalisation: unless the config
sets ``mean``/``std``, the train split's own per-channel mean and std (stored with every split).
Class names are ``U+XXXX_UNICODE-NAME`` (e.g. ``U+0416_CYRILLIC-CAPITAL-LETTER-ZHE``).
"""

from __future__ import annotations

import functools
import logging
import math
import unicodedata
from pathlib import Path

import matplotlib
import numpy as np
import torch
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from purer.config import DatasetConfig
from purer.data.cache import SplitData
from purer.data.images import normalisation
from purer.errors import DataError
from purer.seeding import make_generator
from purer.tracking import progress

log = logging.getLogger(__name__)

FACE_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)  # fmt: skip
REFERENCE_FACE = 0  # DejaVu Sans: shape signatures for near-duplicate detection
MIN_FACES = 12  # a candidate character must be in this many faces' character maps
CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Sm", "So", "Sc"})
EXCLUDED_RANGES = ((0x2500, 0x259F), (0x239B, 0x23AD), (0xFB00, 0xFFFF))  # box drawing, bracket pieces, specials
GLYPHS_SEED = 0
SIGNATURE_SIZE = 16
MIN_SHAPE_DISTANCE = 0.3  # relative L1 distance between signatures below which two characters are one class
FILL = 0.7  # fraction of the canvas the glyph's longer side fills before jitter
SUPERSAMPLE = 4


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def face_paths() -> list[Path]:
    """The 16 bundled font files, in :data:`FACE_FILES` order."""
    paths = [font_dir() / name for name in FACE_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"glyphs: matplotlib font(s) {missing} not found in {font_dir()}; the glyphs dataset needs "
            "matplotlib's bundled DejaVu and STIX fonts"
        )
    return paths


def is_candidate(codepoint: int) -> bool:
    """A base letter or symbol (see module docstring), ignoring font coverage."""
    char = chr(codepoint)
    if codepoint > 0xFFFF or any(lo <= codepoint <= hi for lo, hi in EXCLUDED_RANGES):
        return False
    return unicodedata.category(char) in CATEGORIES and not unicodedata.decomposition(char)


@functools.cache
def candidate_characters() -> dict[int, tuple[int, ...]]:
    """Candidate code points (ascending) -> indices of the faces whose character map has them."""
    faces: dict[int, list[int]] = {}
    for index, path in enumerate(face_paths()):
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
        for codepoint in cmap:
            if is_candidate(codepoint):
                faces.setdefault(codepoint, []).append(index)
    return {cp: tuple(idx) for cp, idx in sorted(faces.items()) if len(idx) >= MIN_FACES}


def class_name(codepoint: int) -> str:
    """Readable, file-system-safe class name, e.g. ``U+0041_LATIN-CAPITAL-LETTER-A``."""
    name = unicodedata.name(chr(codepoint), "")
    slug = "".join(c if c.isalnum() else "-" for c in name)
    return f"U+{codepoint:04X}_{slug}" if slug else f"U+{codepoint:04X}"


def crop_glyph(font: ImageFont.FreeTypeFont, codepoint: int) -> Image.Image | None:
    """The character drawn white on black in ``font``, cropped to its ink; None if it has no ink."""
    side = int(font.size) * 3
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side // 2, side // 2), chr(codepoint), font=font, fill=255, anchor="mm")
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def shape_signature(crop: Image.Image) -> np.ndarray:
    """Scale-normalised shape: the crop fitted (aspect kept) into a 16x16 square; float [256] in [0, 1]."""
    width, height = crop.size
    scale = SIGNATURE_SIZE / max(width, height)
    small = crop.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    square = Image.new("L", (SIGNATURE_SIZE, SIGNATURE_SIZE), 0)
    square.paste(small, ((SIGNATURE_SIZE - small.size[0]) // 2, (SIGNATURE_SIZE - small.size[1]) // 2))
    return np.asarray(square, dtype=np.float64).reshape(-1) / 255.0


def shape_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Relative L1 distance sum|a-b| / sum max(a,b) between signatures (0 = same shape).

    Args:
        a: one signature [D].
        b: one signature [D], or several [K, D] (then the result is [K]).
    """
    distance = np.abs(a - b).sum(-1) / np.maximum(np.maximum(a, b).sum(-1), 1e-12)
    return float(distance) if np.ndim(distance) == 0 else distance


def choose_classes(n_total: int) -> list[int]:
    """The first ``n_total`` distinct-looking candidates in the fixed seeded order (module docstring)."""
    candidates = list(candidate_characters())
    order = torch.randperm(len(candidates), generator=make_generator(GLYPHS_SEED, "glyphs", "classes"))
    reference = ImageFont.truetype(str(face_paths()[REFERENCE_FACE]), 64)
    chosen: list[int] = []
    signatures = np.zeros((min(n_total, len(candidates)), SIGNATURE_SIZE**2))
    for index in order.tolist():
        crop = crop_glyph(reference, candidates[index])
        if crop is None:
            continue
        signature = shape_signature(crop)
        if not chosen or shape_distance(signature, signatures[: len(chosen)]).min() >= MIN_SHAPE_DISTANCE:
            signatures[len(chosen)] = signature
            chosen.append(candidates[index])
            if len(chosen) == n_total:
                return chosen
    raise DataError(
        f"glyphs: train_classes + val_classes + test_classes = {n_total}, but only {len(chosen)} "
        "distinct characters are available"
    )


def canvas_side(image_size: int) -> int:
    """Side of the high-resolution canvas an instance is drawn on before downscaling."""
    return min(SUPERSAMPLE * image_size, max(512, image_size))


def affine_inverse(crop_size: tuple[int, int], canvas: int, u: np.ndarray) -> tuple[float, ...]:
    """PIL ``AFFINE`` data (output -> crop coordinates) for one instance.

    Args:
        crop_size: (width, height) of the glyph crop.
        canvas: output canvas side.
        u: uniforms in [0, 1); u[0] rotation, u[1] scale, u[2] aspect, u[3] shear, u[4:6] shift.
    """
    angle = math.radians((2 * u[0] - 1) * 15)
    scale = FILL * canvas / max(crop_size) * (0.8 + 0.25 * u[1])
    aspect = math.exp((2 * u[2] - 1) * 0.1)
    shear = (2 * u[3] - 1) * 0.25
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([aspect, 1 / aspect])
    inverse = np.linalg.inv(forward)
    centre_out = canvas / 2 + (2 * u[4:6] - 1) * 0.08 * canvas
    centre_in = np.array(crop_size, dtype=np.float64) / 2
    offset = centre_in - inverse @ centre_out
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def draw_instance(crop: Image.Image, u: np.ndarray, noise: np.ndarray, image_size: int) -> np.ndarray:
    """One instance of a character.

    Args:
        crop: the glyph in one face (:func:`crop_glyph`).
        u: 8 uniforms in [0, 1): affine (6), stroke (1), noise level (1).
        noise: standard normal [image_size, image_size].
        image_size: output side.

    Returns:
        uint8 [image_size, image_size].
    """
    canvas = canvas_side(image_size)
    data = affine_inverse(crop.size, canvas, u)
    image = crop.transform((canvas, canvas), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0)
    kernel = 3 if canvas <= 192 else 5
    if u[6] < 1 / 3:
        image = image.filter(ImageFilter.MinFilter(kernel))
    elif u[6] >= 2 / 3:
        image = image.filter(ImageFilter.MaxFilter(kernel))
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float64) + noise * (0.08 * u[7] * 255.0)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_class(codepoint: int, fonts: list[ImageFont.FreeTypeFont], n_images: int, image_size: int) -> np.ndarray:
    """``n_images`` instances of one character, cycling over the faces that have it.

    Returns:
        uint8 [n_images, image_size, image_size].
    """
    faces = candidate_characters()[codepoint]
    crops = [c for c in (crop_glyph(fonts[f], codepoint) for f in faces) if c is not None]
    generator = make_generator(GLYPHS_SEED, "glyphs", "instances", codepoint)
    uniforms = torch.rand((n_images, 8), generator=generator, dtype=torch.float64).numpy()
    noise = torch.randn((n_images, image_size, image_size), generator=generator, dtype=torch.float64).numpy()
    return np.stack([draw_instance(crops[i % len(crops)], uniforms[i], noise[i], image_size) for i in range(n_images)])


def render_split(codepoints: list[int], config: DatasetConfig, desc: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Images [N, 1, H, W] uint8, labels [N] int64 and sorted class names of one split."""
    fonts = [ImageFont.truetype(str(p), canvas_side(config.image_size)) for p in face_paths()]
    ordered = sorted(codepoints, key=class_name)
    blocks = [
        render_class(cp, fonts, config.images_per_class, config.image_size)
        for cp in progress(ordered, desc=desc)
    ]
    images = torch.from_numpy(np.concatenate(blocks))[:, None]
    labels = torch.arange(len(ordered), dtype=torch.int64).repeat_interleave(config.images_per_class)
    return images, labels, tuple(class_name(cp) for cp in ordered)


def build(config: DatasetConfig) -> dict[str, SplitData]:
    """Render the train/val/test splits (see the module docstring)."""
    counts = {"train": config.train_classes, "val": config.val_classes, "test": config.test_classes}
    chosen = choose_classes(sum(counts.values()))
    rendered, start = {}, 0
    for split, count in counts.items():
        rendered[split] = render_split(chosen[start : start + count], config, f"glyphs {split}")
        start += count
    channels = config.channels or 1
    if channels == 3:
        rendered = {k: (v[0].expand(-1, 3, -1, -1).contiguous(), *v[1:]) for k, v in rendered.items()}
    mean, std = normalisation(rendered["train"][0], config.mean, config.std)
    log.info("glyphs: %s classes, %d images each", "/".join(map(str, counts.values())), config.images_per_class)
    return {split: SplitData(images, labels, names, mean, std) for split, (images, labels, names) in rendered.items()}


def count_train_classes(config: DatasetConfig) -> int:
    """Number of meta-train classes, without rendering."""
    return config.train_classes
