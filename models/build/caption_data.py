"""Image-caption data: COCO-format files for users, generated scenes for the demo and tests.

No COCO/Flickr data (and no pretrained captioner) can be fetched here, so **the demo captioner is
trained on generated scenes**: shapes (circle, square, triangle) in colours, sizes, counts and
positions, rendered with PIL on a noisy background, each with a template caption
("a large red circle on the left", "three blue triangles", "a green square left of a yellow
circle"). Scenes are rendered on demand from a seed, so a split holds no pixels.

COCO format (`captions_*.json`): {"images": [{"id", "file_name"}], "annotations":
[{"image_id", "caption"}]} plus a folder with the image files; several captions per image become
several references.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from models.build.data import DataError

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 215, 40), "purple": (140, 50, 170), "orange": (245, 140, 30)}
POSITIONS = {"on the left": (0.25, 0.5), "on the right": (0.75, 0.5), "at the top": (0.5, 0.25),
             "at the bottom": (0.5, 0.75), "in the middle": (0.5, 0.5)}
SIZES = {"small": 0.11, "large": 0.22}  # radius as a fraction of the image side
COUNTS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Scene:
    """A generated scene: enough to render the image and to write its caption."""

    seed: int
    kind: str  # "single", "count" or "pair"
    caption: str


@dataclass
class CaptionSplit:
    """Images (file paths or generated scenes) with one or more reference captions each."""

    images: list[Path | Scene]
    captions: list[list[str]]  # references per image
    image_size: int = 224  # render size of generated scenes

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        src = self.images[i]
        if isinstance(src, Scene):
            return render_scene(src, self.image_size)
        with Image.open(src) as im:
            return im.convert("RGB")


@dataclass
class CaptionDataset:
    name: str
    train: CaptionSplit
    val: CaptionSplit
    test: CaptionSplit
    source: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for src, refs in zip(split.images, split.captions, strict=True):
                h.update(str(src.seed if isinstance(src, Scene) else src.name).encode())
                h.update("\x1f".join(refs).encode() + b"\n")
        return h.hexdigest()

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "fingerprint": self.fingerprint(), **self.source}


# ---- generated scenes -----------------------------------------------------------------------
def _draw(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
          fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)


Item = tuple[str, str, float, float, float]  # shape, colour, centre x, centre y, radius


def _layout(rng: random.Random, kind: str) -> tuple[str, list[Item]]:
    """(caption, [(shape, colour, cx, cy, r)]) in unit coordinates."""
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    if kind == "single":
        size, where = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        cx, cy = POSITIONS[where]
        jitter = 0.04
        cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
        r = SIZES[size] * rng.uniform(0.9, 1.1)
        return f"a {size} {colour} {shape} {where}", [(shape, colour, cx, cy, r)]
    if kind == "count":
        n = rng.choice(list(COUNTS))
        cells = rng.sample([(x, y) for x in (0.2, 0.5, 0.8) for y in (0.2, 0.5, 0.8)], n)
        items = [(shape, colour, x + rng.uniform(-0.05, 0.05), y + rng.uniform(-0.05, 0.05),
                  0.09 * rng.uniform(0.85, 1.1)) for x, y in cells]
        return f"{COUNTS[n]} {colour} {shape}s", items
    colour2 = rng.choice([c for c in COLOURS if c != colour])
    shape2 = rng.choice(SHAPES)
    y1, y2 = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    items = [(shape, colour, 0.28, y1, 0.14), (shape2, colour2, 0.72, y2, 0.14)]
    return f"a {colour} {shape} left of a {colour2} {shape2}", items


def make_scene(seed: int) -> Scene:
    rng = random.Random(seed)
    kind = rng.choices(("single", "count", "pair"), weights=(0.45, 0.25, 0.30))[0]
    caption, _ = _layout(random.Random(seed * 7919 + 1), kind)
    return Scene(seed, kind, caption)


def render_scene(scene: Scene, size: int = 224) -> Image.Image:
    """Draw the scene: shapes on a light, noisy background."""
    rng = random.Random(scene.seed * 7919 + 1)
    _, items = _layout(rng, scene.kind)
    bg = rng.randint(200, 245)
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size))  # uniform 0..255
    im = noise.point(lambda v: max(0, min(255, bg + (v - 128) // 10)))
    im = Image.merge("RGB", (im, im, im))
    d = ImageDraw.Draw(im)
    for shape, colour, cx, cy, r in items:
        _draw(d, shape, cx * size, cy * size, r * size, COLOURS[colour])
    return im


def generated_scenes(n_train: int = 2400, n_val: int = 300, n_test: int = 300,
                     image_size: int = 224, seed: int = 0) -> CaptionDataset:
    """Generated scenes with template captions (one reference each), disjoint seeds per split."""
    def split(offset: int, n: int) -> CaptionSplit:
        scenes = [make_scene(seed * 1_000_003 + offset + i) for i in range(n)]
        return CaptionSplit(list(scenes), [[s.caption] for s in scenes], image_size)

    return CaptionDataset("generated-scenes", split(0, n_train), split(10_000_000, n_val),
                          split(20_000_000, n_test),
                          {"source": "generated scenes (PIL-rendered shapes, template captions)",
                           "image_size": str(image_size)})


def scene_words() -> list[str]:
    words = {"a", "left", "of", *SHAPES, *(s + "s" for s in SHAPES), *COLOURS, *SIZES,
             *COUNTS.values()}
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)


# ---- COCO format ---------------------------------------------------------------------------
def load_coco(annotations: str | Path, images_dir: str | Path | None = None,
              seed: int = 13) -> CaptionDataset:
    """Read COCO-format captions; split images 80/10/10 with a fixed seed."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        refs: dict[int, list[str]] = {}
        for a in data["annotations"]:
            refs.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO captions file ({e})".splitlines()[0]) from None
    root = Path(images_dir) if images_dir else _images_dir(path)
    ids = sorted(i for i in images if refs.get(i))
    missing = [images[i] for i in ids if not (root / images[i]).exists()]
    if missing:
        raise DataError(f"{root}: {len(missing)} image files missing (first: {missing[0]})")
    if len(ids) < 10:
        raise DataError(f"{path}: {len(ids)} captioned images; need at least 10")
    random.Random(seed).shuffle(ids)
    n_val = n_test = max(1, len(ids) // 10)

    def split(sel: Sequence[int]) -> CaptionSplit:
        return CaptionSplit([root / images[i] for i in sel], [refs[i] for i in sel])

    return CaptionDataset(path.stem, split(ids[n_val + n_test:]), split(ids[:n_val]),
                          split(ids[n_val:n_val + n_test]),
                          {"source": f"COCO-format file {path.name}", "images_dir": str(root)})


def _images_dir(annotations: Path) -> Path:
    for cand in (annotations.parent / "images", annotations.parent / annotations.stem,
                 annotations.parent):
        if cand.is_dir():
            return cand
    return annotations.parent


# ---- word-level tokenizer -----------------------------------------------------------------
def words_of(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", caption.lower())


def word_tokenizer(captions: Sequence[str], min_count: int = 1,
                   max_words: int = 8000) -> PreTrainedTokenizerFast:
    """Lower-casing word-level tokenizer over the training captions: [PAD] [BOS] [EOS] [UNK]."""
    counts = Counter(w for c in captions for w in words_of(c))
    words = [w for w, n in counts.most_common(max_words) if n >= min_count]
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(words))}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]")
