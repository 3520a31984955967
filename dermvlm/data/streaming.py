"""A torch IterableDataset over webdataset shards, split across DDP ranks and loader workers."""
import torch

from dermvlm.data.shards import decode_sample, iter_shard_samples, shard_paths


class ShardDataset(torch.utils.data.IterableDataset):
    """Streams (transformed image, caption, record) from shards; each DDP rank and loader
    worker reads a disjoint subset of shards (shard i goes to slot i mod world*workers)."""

    def __init__(self, spec, transform=None, rank=0, world_size=1):
        self.paths = shard_paths(spec)
        self.transform, self.rank, self.world_size = transform, rank, world_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slots, slot = self.world_size * workers, self.rank * workers + worker
        mine = [p for i, p in enumerate(self.paths) if i % slots == slot]
        for _, group in iter_shard_samples(mine):
            image, caption, record = decode_sample(group)
            yield (self.transform(image) if self.transform else image), caption, record
