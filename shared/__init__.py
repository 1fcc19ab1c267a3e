"""Library code shared by the stages: face shards, the multi-source stream, training utilities."""
