"""Runs the PyTorch peer (``../shared/peers/bench_torch.py``) on a CUDA GPU, unchanged.

    python benchmarks/peer_on_cuda.py [--peer DIR] -- --model incp --size 512 --steps 50

The peer is written for the CPU: it builds its model and batches on the host. This
wrapper makes CUDA the default device and moves the batches there, turns on the cuDNN
autotuner (the usual setting for fixed shapes), runs the peer's script as it is (its
``loss.item()`` per step synchronises, so its step timing holds on the GPU), then prints
one more JSON line with the peak CUDA memory allocated.
"""

import argparse
import json
import os
import runpy
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default=os.path.join(REPO, "..", "shared", "peers"))
    args, peer_args = parser.parse_known_args()
    if not torch.cuda.is_available():
        sys.exit("peer_on_cuda.py: no CUDA device visible to torch")
    torch.set_default_device("cuda")
    torch.backends.cudnn.benchmark = True
    from_numpy = torch.from_numpy
    torch.from_numpy = lambda array: from_numpy(array).to("cuda")
    script = os.path.join(args.peer, "bench_torch.py")
    sys.argv = [script, *[a for a in peer_args if a != "--"]]
    runpy.run_path(script, run_name="__main__")
    print(json.dumps({"case": "peer_cuda_memory", "device": torch.cuda.get_device_name(),
                      "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}),
          file=sys.__stdout__, flush=True)  # the peer leaves sys.stdout pointing at stderr


if __name__ == "__main__":
    main()
