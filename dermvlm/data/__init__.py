"""Common records, manifests, webdataset shards and the converter that data recipes share."""
from dermvlm.data.records import ManifestWriter, Record, read_manifest

__all__ = ["ManifestWriter", "Record", "read_manifest"]
