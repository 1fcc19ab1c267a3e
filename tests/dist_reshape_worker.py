"""One rank of the stream-reshape test; launched by torchrun (or python, for one process) from
test_stream_distributed.py.

    dist_reshape_worker.py SHARDS OUT WORKERS STEPS [STATES]

Every rank iterates its exact FaceStream (global batch 6) for STEPS global steps in lockstep (a
collective per micro-batch, as DDP would), starting from the positions in STATES when given;
rank 0 writes OUT: each step's keys and per-sample image digests (ranks in order), and every
rank's stream state at the end.
"""
import hashlib
import json
import sys

import torch
import torch.distributed as dist
from accelerate import PartialState

from shared.stream import Augment, FaceStream, StreamConfig, build_sources

GLOBAL_BATCH = 6


def gather(state, obj):
    if state.num_processes == 1:
        return [obj]
    out = [None] * state.num_processes
    dist.all_gather_object(out, obj)
    return out


def main(shards: str, out: str, workers: str, steps: str, states: str | None = None) -> None:
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    sources = build_sources({"celeba": f"{shards}/celeba", "rec": f"{shards}/casia_rec"})
    cfg = StreamConfig(mode="exact", batch_size=GLOBAL_BATCH // world, global_batch=GLOBAL_BATCH,
                       num_workers=int(workers), shuffle_buffer=8, augment=Augment(kind="mae", size=16), seed=3)
    stream = FaceStream(sources, cfg, rank, world)
    if states:
        with open(states) as f:
            stream.load_saved_states(json.load(f)["states"])
    mine = []
    while len(mine) < int(steps):
        for batch in stream:
            if world > 1:
                dist.all_reduce(torch.ones(1))  # lockstep, like a gradient all-reduce
            digests = [hashlib.sha1(im.contiguous().numpy().tobytes()).hexdigest() for im in batch["image"]]
            mine.append([batch["key"], digests])
            if len(mine) == int(steps):
                break
    ranks = gather(state, {"steps": mine, "state": stream.state_dict()})
    if rank == 0:
        steps_out = [[sum((r["steps"][i][j] for r in ranks), []) for j in (0, 1)] for i in range(int(steps))]
        with open(out, "w") as f:
            json.dump({"steps": steps_out, "states": [r["state"] for r in ranks]}, f)
    state.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
