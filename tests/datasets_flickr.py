"""A tiny Flickr30K with realistic caption lengths, in VSE-infinity's precomp layout or Karpathy's.

Caption lengths follow Flickr30K's, in BERT WordPiece tokens including [CLS] and [SEP]: the histogram
below, measured on the 10,070 captions of the Karpathy dev and test splits (docs/recipes/retrieval.md,
"Caption lengths"). Every word used is one WordPiece of BERT's uncased vocabulary and one word of the
word-hashing tokenizer, so a caption of L tokens is L - 2 words under either tokenizer.

Each split's lengths are the histogram's quantiles at (k + 0.5) / N for its N captions, shuffled with the
seed: a few hundred captions reproduce the distribution's mean and quartiles, and a random batch's longest
caption (what padding to the longest pays for) behaves as on the real data.

Signal: image i has a colour and a noun (24 classes); its region features carry both, and its captions
name both among filler words, so a small model learns to retrieve above chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import COLORS, color_image

# Flickr30K caption length in WordPiece tokens incl. [CLS]/[SEP] -> number of captions (Karpathy dev + test)
FLICKR30K_LENGTHS = {
    4: 2, 5: 1, 6: 16, 7: 44, 8: 179, 9: 423, 10: 600, 11: 733, 12: 881, 13: 898, 14: 863, 15: 849, 16: 760,
    17: 682, 18: 564, 19: 473, 20: 382, 21: 299, 22: 248, 23: 186, 24: 162, 25: 155, 26: 98, 27: 85, 28: 76,
    29: 59, 30: 67, 31: 64, 32: 31, 33: 32, 34: 30, 35: 17, 36: 18, 37: 8, 38: 12, 39: 13, 40: 9, 41: 3, 42: 7,
    43: 4, 44: 5, 45: 2, 46: 5, 47: 2, 48: 4, 49: 1, 50: 2, 51: 2, 54: 2, 55: 1, 56: 1, 58: 3, 59: 1, 61: 2,
    63: 1, 65: 1, 70: 1, 88: 1,
}

NOUNS = ("man", "woman", "dog", "child")
FILLER = (
    "the is in on with and of at while near two three young old people street water standing walking playing "
    "wearing shirt hat front building grass ball sitting looking small large group outside park beach snow "
    "field crowd holding running jumping riding sidewalk city road table stage camera smiling talking next to "
    "his her their behind under down up into background another some other wall tree trees sun day night car "
    "bike horse boat girl boy men women children dress jacket pants rock hill mountain river lake shore sand "
    "wave waves air"
).split()  # single WordPieces; no colour and no class noun, so only the class words carry the signal


def stratified_lengths(count: int, rng: np.random.Generator, histogram: dict[int, int] = FLICKR30K_LENGTHS) -> list[int]:
    """`count` lengths at the histogram's quantiles (k + 0.5) / count, in a seeded random order."""
    lengths = np.array(sorted(histogram))
    cdf = np.cumsum([histogram[n] for n in lengths]) / sum(histogram.values())
    quantiles = (np.arange(count) + 0.5) / count
    picked = lengths[np.searchsorted(cdf, quantiles)]
    return rng.permutation(picked).tolist()


def caption(color: str, noun: str, tokens: int, rng: np.random.Generator) -> str:
    """A caption of exactly `tokens` WordPiece tokens with [CLS]/[SEP] (tokens - 2 words) naming the class."""
    words = tokens - 2
    head = [color, noun] if words <= 2 else ["a", color, noun]
    return " ".join(head + [str(w) for w in rng.choice(FILLER, max(0, words - len(head)))])


def image_class(index: int) -> tuple[int, int]:
    """(colour index, noun index) of image `index`: all 24 classes appear in every 24 images."""
    return index % len(COLORS), (index // len(COLORS)) % len(NOUNS)


def split_captions(images: int, rng: np.random.Generator) -> list[str]:
    """5 captions per image, image by image, lengths from the Flickr30K distribution."""
    lengths = stratified_lengths(5 * images, rng)
    colors = list(COLORS)
    out = []
    for i in range(images):
        c, n = image_class(i)
        out += [caption(colors[c], NOUNS[n], lengths[5 * i + k], rng) for k in range(5)]
    return out


SPLITS = (("train", "train"), ("dev", "val"), ("test", "test"))  # (precomp file prefix, Karpathy split)


def write_flickr_precomp(root: Path, images: int = 60, eval_images: int = 20, regions: int = 36, dim: int = 64,
                         seed: int = 0) -> Path:
    """precomp/{train,dev,test}_ims.npy [I, regions, dim] float32 + _caps.txt (5 captions per image).

    The colour is in feature dims 0-5 and the noun in dims 6-9 of every region (value 3 over N(0, 0.3) noise)."""
    assert dim >= len(COLORS) + len(NOUNS), f"dim must hold the {len(COLORS) + len(NOUNS)} class dimensions"
    folder = root / "precomp"
    folder.mkdir(parents=True, exist_ok=True)
    for s, (prefix, _) in enumerate(SPLITS):
        rng = np.random.default_rng([seed, s, 1])
        count = images if prefix == "train" else eval_images
        features = rng.normal(0, 0.3, (count, regions, dim)).astype(np.float32)  # [I, R, D]
        for i in range(count):
            c, n = image_class(i)
            features[i, :, c] += 3.0
            features[i, :, len(COLORS) + n] += 3.0
        np.save(folder / f"{prefix}_ims.npy", features)
        captions = split_captions(count, np.random.default_rng([seed, s]))  # as the Karpathy variant's
        (folder / f"{prefix}_caps.txt").write_text("\n".join(captions) + "\n")
    return root


def write_flickr_karpathy(root: Path, images: int = 60, eval_images: int = 20, size: int = 32, seed: int = 0) -> Path:
    """dataset_flickr30k.json (Karpathy split) + images/: each image a square of its class colour, 5 captions."""
    entries = []
    index = 0
    for s, (_, split) in enumerate(SPLITS):
        rng = np.random.default_rng([seed, s])
        count = images if split == "train" else eval_images
        captions = split_captions(count, rng)
        for i in range(count):
            filename = f"{split}_{i:05d}.png"
            color_image(root / "images" / filename, list(COLORS.values())[image_class(i)[0]], seed=index, size=size)
            sentences = [{"raw": text, "tokens": text.split(), "imgid": index, "sentid": 5 * index + k}
                         for k, text in enumerate(captions[5 * i : 5 * i + 5])]
            entries.append({"filename": filename, "imgid": index, "split": split, "sentences": sentences,
                            "sentids": [x["sentid"] for x in sentences]})
            index += 1
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return root
