"""Image files -> uint8 tensors of a fixed size, and their normalisation for a backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]  # ImageNet statistics
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def load_image(path: Path | str, size: int) -> torch.Tensor:
    """RGB image resized (bilinear) to size x size, as uint8 [3, size, size]."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({exc}); expected a JPEG, PNG or other format PIL reads") from None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).clone()


def verify_images(paths: list[Path], listed_in: Path) -> None:
    """Every image file exists and its data are intact (PIL's verify: decodes the structure without the pixels,
    so a dataset is checked in seconds before any run starts instead of failing mid-training)."""
    for path in dict.fromkeys(paths):
        if not Path(path).is_file():
            raise UserError(f"image {path} listed in {listed_in} is missing")
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: not a readable image ({exc}); expected a JPEG, PNG or other format PIL reads"
                            ) from None


def normalise(images: torch.Tensor, mean: torch.Tensor = MEAN, std: torch.Tensor = STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float [..., 3, H, W] with ImageNet mean and std (or the given [3, 1, 1] ones)."""
    return (images.float() / 255.0 - mean) / std
