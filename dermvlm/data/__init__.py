"""Common records (`records`), manifests, webdataset shards (`shards`), table reading
(`tables`) and the converter (`convert`) that the data recipes share."""
