"""Face shards: raw datasets -> webdataset tar shards + manifest (see `manifest` for the format)."""
