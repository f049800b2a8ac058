"""An invisible watermark on the images genlab writes from a model, as Stable Diffusion's scripts do:
the `invisible-watermark` package's DWT-DCT method (`imwatermark`), payload `PAYLOAD`.

How it works (imwatermark.maxDct): the image goes to YUV; the U channel's Haar wavelet LL band
(half the size) is cut into 4x4 blocks, and in each block the largest coefficient (the DC one
aside) is quantised to a multiple of `SCALE` plus 1/4 or 3/4 of it: one payload bit per block,
bits in turn, so an image carries the payload `blocks / bits` times and reading averages the
copies. An H x W image has (H//8) * (W//8) blocks: 48 bits need at least 56x56 for one copy.

Sizes: the package refuses images under 256x256 pixels (WatermarkEncoder.encode); we call its
embedder directly and enlarge any image whose shorter side is under `MIN_SIDE` (256) by an integer
factor, nearest neighbour (sharp pixels, the content unchanged), before marking: an 8x8 digit is
written as 256x256, a 28x28 one as 280x280, a 64-digit grid (274x274) as it is. Measured on 40 real
8x8 digits (grey: the U channel is flat, the hardest case), the share read back intact when marked
at a side of 56 (one copy of the 48 bits) / 64 / 96 / 128 / 256: 12 / 13 / 18 / 28 / 40 of 40;
below 56 nothing (fewer blocks than bits). A JPEG save (quality 75) erased it at every size tried
(up to 512: bit accuracy 0.50, chance); `make detect` reports these figures per run.

The mark lives in colour (U): grey images are written as RGB when marked (a faint tint, PSNR ~41 dB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from genlab.errors import GenlabError

PAYLOAD = b"genlab"  # 48 bits
SCALES = (0, 36, 36)  # the package's default: Y untouched, U marked (its loop reads channels 0 and 1)
MIN_SIDE = 256  # images with a shorter side below this are enlarged (nearest) before marking: see above


def _bits(payload: bytes = PAYLOAD) -> list[int]:
    return [int(b) for b in np.unpackbits(np.frombuffer(payload, dtype=np.uint8))]


def _embedder(payload: bytes = PAYLOAD):
    try:  # imported here: cv2 is heavy and only marking needs it
        from imwatermark.maxDct import EmbedMaxDct
    except ImportError as err:  # e.g. opencv-python (the GUI build) without libGL on a server
        raise GenlabError(
            f"watermark: cannot import the invisible-watermark package ({err}); install opencv-python-headless "
            "and invisible-watermark (pip install --no-deps invisible-watermark), or set watermark: false"
        ) from None

    bits = _bits(payload)
    return EmbedMaxDct(bits, wmLen=len(bits), scales=list(SCALES), block=4)


def enlarge(pixels: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """`(H, W[, C])` uint8 enlarged by the smallest integer factor making its shorter side >= min_side."""
    factor = -(-min_side // min(pixels.shape[:2]))
    if factor <= 1:
        return pixels
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]


def embed(pixels: np.ndarray, payload: bytes = PAYLOAD, min_side: int = MIN_SIDE) -> np.ndarray:
    """`(H, W[, C])` uint8 -> the marked `(H', W', 3)` uint8 RGB (enlarged when H or W < min_side)."""
    rgb = enlarge(_rgb(np.ascontiguousarray(pixels, dtype=np.uint8)), min_side)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    marked = _embedder(payload).encode(bgr)  # float YUV round trip; clipped back to bytes here
    return np.clip(np.round(marked), 0, 255).astype(np.uint8)[..., ::-1].copy()


def read_bits(pixels: np.ndarray, payload: bytes = PAYLOAD) -> np.ndarray:
    """The payload-length bits an image carries (random bits for an unmarked image; 2s, no bit, for
    one too small to hold a copy: fewer 4x4 LL blocks than bits)."""
    height, width = np.shape(pixels)[:2]
    if (height // 8) * (width // 8) < len(_bits(payload)):
        return np.full(len(_bits(payload)), 2, dtype=np.uint8)
    bgr = np.ascontiguousarray(_rgb(np.asarray(pixels, dtype=np.uint8))[..., ::-1])
    return np.asarray(_embedder(payload).decode(bgr), dtype=np.uint8)


def bit_accuracy(pixels: np.ndarray, payload: bytes = PAYLOAD) -> float:
    return float((read_bits(pixels, payload) == np.asarray(_bits(payload))).mean())


def is_marked(pixels: np.ndarray, payload: bytes = PAYLOAD) -> bool:
    """Every bit of the payload read back (2**-48 by chance for an unmarked image)."""
    return bit_accuracy(pixels, payload) == 1.0


def save(pixels: np.ndarray, path: str | Path, mark: bool = True) -> Path:
    """Write `(H, W[, C])` uint8 pixels as a PNG, marked (enlarged when small, RGB) unless `mark` is false."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if mark:
        pixels = embed(pixels)
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]  # grey stays grey (L)
    Image.fromarray(pixels).save(path)
    return Path(path)


def pixels(grid) -> np.ndarray:
    """A `(C, H, W)` float tensor in [0, 1] as `(H, W, C)` uint8, rounded as torchvision's save_image does."""
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).cpu().byte().numpy()


def boolean(text: str) -> bool:
    """`true`/`false` (also 1/0, yes/no, on/off) from the command line; ValueError otherwise."""
    value = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if text.lower() not in value:
        raise ValueError(text)
    return value[text.lower()]


def load(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))
