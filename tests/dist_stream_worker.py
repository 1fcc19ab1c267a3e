"""One rank of the two-process stream test; launched by torchrun from test_stream_distributed.py.

Each rank iterates its own FaceStream, with a collective after every batch as DDP would, so a
rank with fewer batches would hang the run; rank 0 gathers what every rank saw into a JSON.
"""
import json
import sys

import torch
import torch.distributed as dist
from accelerate import PartialState

from shared.stream import Augment, FaceStream, StreamConfig, build_sources


def iterate(stream: FaceStream) -> tuple[int, list[str], list[str]]:
    batches, valid_keys, sources = 0, [], []
    for batch in stream:
        dist.all_reduce(torch.ones(1))  # lockstep, like a gradient all-reduce
        batches += 1
        valid_keys += [k for k, v in zip(batch["key"], batch["valid"]) if v]
        sources += [m["source"] for m, v in zip(batch["meta"], batch["valid"]) if v]
    return batches, valid_keys, sources


def main(shards: str, out: str) -> None:
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    aug = Augment(kind="mae", size=16)
    exact = FaceStream(build_sources({"celeba": f"{shards}/celeba", "rec": f"{shards}/casia_rec"}),
                       StreamConfig(mode="exact", batch_size=4, num_workers=2, augment=aug), rank, world)
    resampled = FaceStream(
        build_sources({"affectnet": f"{shards}/affectnet", "celeba": f"{shards}/celeba", "imdb": f"{shards}/imdb_wiki"},
                      "affectnet:1,celeba:2,imdb:1", pretraining=True),
        StreamConfig(mode="resampled", batch_size=25, batches_per_epoch=40, num_workers=2, shuffle_buffer=20,
                     augment=aug), rank, world)
    mine = {"rank": rank, "world": world, "exact": iterate(exact), "resampled": iterate(resampled)}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
