"""The one door for images: every image a user or a data set hands dermvlm (CLI, app,
evaluator, recipes, training loaders) is opened by `open_image`, so each is seen upright, as
8-bit RGB, within the same size limits, and a bad file gets the same one-line reason
everywhere. Also the pixel normalisation the image towers share."""
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermvlm.errors import DataError

# OpenAI CLIP's normalisation (open_clip.OPENAI_DATASET_MEAN / _STD), used by every tower here
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000          # ~6300 x 6300; PIL's own bomb check fires above this
# what a folder of images is taken to hold (classify, labelled sets, the image_folder recipe)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# How a convolutional tower is fed on CPU: a channels-last input runs oneDNN's faster
# convolution kernels, and chunks of a few images keep a 224-px tower's activations in cache
# (benchmarks.classify_throughput --compare-layout measures both against the plain way)
CPU_CHANNELS_LAST = True
CPU_CHUNK = 8


class ImageError(DataError):
    """A file that is not a usable image; the message names the file (its base name only, so
    a server's temporary paths are not shown to a web visitor) and says why."""


def collect_images(inputs, failures):
    """Files named directly, plus image files under named folders (sorted); a name that does
    not exist is added to `failures` as (path, reason)."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            paths.append(path)
        else:
            failures.append((str(path), "no such file"))
    return paths


def open_image(source, max_bytes=MAX_FILE_BYTES, max_pixels=MAX_PIXELS, name=None):
    """An upright 8-bit RGB PIL image from a path, encoded bytes (a shard sample; `name` says
    which) or a PIL image (normalised the same way), or ImageError. Handles EXIF rotation,
    RGBA/LA (flattened on white), greyscale, palette and 16-bit images; refuses oversized
    files and decompression bombs before decoding pixels."""
    if source is None:
        raise ImageError("no image given; please upload an image first")
    if isinstance(source, Image.Image):
        return _to_rgb8(ImageOps.exif_transpose(source))
    encoded = isinstance(source, (bytes, bytearray))
    if encoded:
        name, size = name or "image bytes", len(source)
    else:
        source = Path(source)
        name = name or source.name
        try:
            size = source.stat().st_size
        except OSError:
            raise ImageError(f"{name}: the file could not be read") from None
    if size > max_bytes:
        raise ImageError(f"{name}: the file is {size / 2**20:.0f} MB; the limit is "
                         f"{max_bytes / 2**20:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if encoded else source) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise ImageError(f"{name}: the image is {width} x {height} pixels; the "
                                     f"limit is {max_pixels / 1e6:.0f} megapixels")
                probe.verify()                       # truncated or corrupt data
            with Image.open(io.BytesIO(source) if encoded else source) as image:
                image.load()
                return _to_rgb8(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image is too large to open safely (limit "
                         f"{max_pixels / 1e6:.0f} megapixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageError(f"{name}: not an image dermvlm can read (or it is corrupt); expected "
                         "a JPEG or PNG photograph") from None


def try_open_image(source):
    """`open_image`, or None when the file is not a usable image (for training loaders, which
    count and report the files they skip)."""
    try:
        return open_image(source)
    except ImageError:
        return None


def _to_rgb8(image):
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):      # 16-bit / float greyscale
        values = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(values, (0.5, 99.5))
        scaled = np.clip((values - low) / max(high - low, 1e-9) * 255, 0, 255)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                               "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def tower_chunks(images, chunk, device="cpu"):
    """The (N, 3, H, W) batch `images` in the pieces an image tower is run on: `chunk` images,
    or on CPU at most CPU_CHUNK, channels-last where CPU_CHANNELS_LAST. Other devices get
    plain `chunk`-sized pieces."""
    import torch
    on_cpu = str(device).startswith("cpu")
    size = min(chunk, CPU_CHUNK) if on_cpu else chunk
    for start in range(0, len(images), size):
        part = images[start:start + size]
        yield part.contiguous(memory_format=torch.channels_last) if \
            on_cpu and CPU_CHANNELS_LAST and part.dim() == 4 else part


def eval_transform(image_size):
    """PIL image -> (3, S, S) normalised tensor: shorter side to S, centre crop."""
    from torchvision import transforms as T
    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(MEAN, STD)])
