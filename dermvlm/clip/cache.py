"""Frozen-tower feature caches: encode each image once (or a few augmented views), train the
rest of the tower on what is cached.

A timm EfficientNet trunk is cut at a block index: `stem_to_cut` (stem + blocks[:cut]) runs
once per view here, `cut_to_pool` (blocks[cut:] + head conv, then average pooling) is what a
later stage trains. With cut = len(blocks) the cache holds the final map and only the CLIP
head learns (the "frozen" stage).

    views = cache_views(trunk, cut, images, transforms, out_file)   # (N, V, C, h, w) fp16
"""
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dermvlm.imaging import try_open_image


def stem_to_cut(trunk, x, cut):
    """(B, 3, S, S) -> (B, C, h, w): the trunk's stem and its first `cut` blocks."""
    x = trunk.bn1(trunk.conv_stem(x))
    for block in trunk.blocks[:cut]:
        x = block(x)
    return x


def cut_to_pool(trunk, x, cut):
    """(B, C, h, w) at the cut -> (B, F) pooled features (the trunk's own global pool)."""
    for block in trunk.blocks[cut:]:
        x = block(x)
    return trunk.global_pool(trunk.bn2(trunk.conv_head(x)))


@torch.no_grad()
def cache_views(trunk, cut, paths, transforms, out_file, batch_size=32, progress=True):
    """Encode every image under each transform to the cut; stored as a float16 .npy memmap
    (N, V, C, h, w). Resumes: rows already written (counted in out_file + '.done') are kept.
    Unreadable images stay all-zero and are listed in the returned `skipped`."""
    out_file = Path(out_file)
    done_file = out_file.with_suffix(".done")
    trunk = trunk.eval()
    probe = stem_to_cut(trunk, torch.zeros(1, 3, *_size(transforms[0])), cut)
    shape = (len(paths), len(transforms), *probe.shape[1:])
    start = int(done_file.read_text()) if done_file.is_file() and out_file.is_file() else 0
    store = np.lib.format.open_memmap(out_file, mode="r+" if start else "w+",
                                      dtype=np.float16, shape=shape)
    skipped = []
    bar = tqdm(total=len(paths), initial=start, desc=f"caching {out_file.name}",
               disable=not progress, unit="img")
    for lo in range(start, len(paths), batch_size):
        images = [try_open_image(p) for p in paths[lo:lo + batch_size]]
        skipped += [p for p, im in zip(paths[lo:lo + batch_size], images) if im is None]
        for v, transform in enumerate(transforms):
            batch = torch.stack([transform(im) if im is not None else
                                 torch.zeros(3, *_size(transform)) for im in images])
            store[lo:lo + len(images), v] = stem_to_cut(trunk, batch, cut).half().numpy()
        store.flush()
        done_file.write_text(str(lo + len(images)))
        bar.update(len(images))
    bar.close()
    return skipped


def _size(transform):
    """(S, S) that a torchvision Compose ends at (its first Resize/crop size)."""
    for t in getattr(transform, "transforms", [transform]):
        size = getattr(t, "size", None)
        if size is not None:
            return (size, size) if isinstance(size, int) else tuple(size)
    raise ValueError("transform has no size")
