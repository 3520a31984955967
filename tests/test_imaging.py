"""The one image door (dermvlm.imaging.open_image): ordinary and unusual images become
upright RGB; bad files, bombs and oversized files get one clear reason naming the file."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dermvlm.imaging import ImageError, open_image


# ---- uploads ---------------------------------------------------------------------------
def _save(image, path, **kw):
    image.save(path, **kw)
    return path


def test_ordinary_and_unusual_images_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert open_image(_save(rgba, tmp_path / "a.png")).getpixel((0, 0)) == (255, 255, 255)
    grey = open_image(_save(Image.new("L", (20, 20), 90), tmp_path / "g.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (90, 90, 90)
    sixteen = Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100)
    deep = open_image(_save(sixteen, tmp_path / "d.png"))
    assert deep.mode == "RGB" and deep.getpixel((0, 0))[0] < deep.getpixel((19, 19))[0]
    wide = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = wide.getexif()
    exif[0x0112] = 6                                   # orientation: rotate 90 on display
    upright = open_image(_save(wide, tmp_path / "r.jpg", exif=exif.tobytes()))
    assert upright.size == (20, 60)


def _png_header_only(width, height):
    """A tiny PNG file that claims a huge canvas (a decompression bomb)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("content, fragment", [
    (b"just some text", "not an image"),
    (None, "not an image"),                                   # truncated JPEG
    (_png_header_only(7_000, 7_000), "megapixels"),             # over our limit
    (_png_header_only(50_000, 50_000), "megapixels"),           # over PIL's bomb limit
], ids=["text", "truncated-jpeg", "large", "bomb"])
def test_bad_uploads_get_a_friendly_message(tmp_path, content, fragment):
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (120, 30, 30)).save(buffer, "JPEG")
        content = buffer.getvalue()[:200]
    path = tmp_path / "upload.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=fragment):
        open_image(path)


def test_oversized_file_is_refused_before_decoding(tmp_path):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "x.png")
    with pytest.raises(ImageError, match="limit"):
        open_image(path, max_bytes=10)


def test_towers_get_small_channels_last_chunks_on_cpu_with_the_same_result(monkeypatch):
    import torch

    from dermvlm import imaging
    images = torch.randn(19, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    parts = list(imaging.tower_chunks(images, 64))
    assert [len(p) for p in parts] == [8, 8, 3] and torch.equal(torch.cat(parts), images)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in parts)
    assert [len(p) for p in imaging.tower_chunks(images, 64, device="cuda")] == [19]
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, groups=8)).eval()
    with torch.no_grad():
        fast = torch.cat([conv(p) for p in imaging.tower_chunks(images, 64)])
        monkeypatch.setattr(imaging, "CPU_CHANNELS_LAST", False)
        assert all(p.is_contiguous() for p in imaging.tower_chunks(images, 64))
        assert torch.allclose(fast, conv(images), atol=1e-5)
