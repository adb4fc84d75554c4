"""Side-by-side train-step throughput: lungseg_jax.bench against the PyTorch peer.

    .venv/bin/python benchmarks/vs_torch.py [--peer ../shared/peers] \
        [--peer_python .venv-peer/bin/python] [--rounds 3] [--steps 10] \
        [--cases incp_unet:128,incp_unet:256,conv_unet:128,conv_unet:256] [--compile] \
        [--memory_size 512]

Machines here are shared and noisy, so the two run alternately, round after round,
and each round's ratio ours/theirs is taken against the best torch variant of that
same round (eager NCHW, eager channels_last, and torch.compile with --compile); the
table reports the median ratio. ``--steps`` timed steps on both sides (ours rounded up to
whole calls of ``config.steps_per_call`` steps). Peak memory (max resident set size, from
``/usr/bin/time -v``) is compared on a short run at ``--memory_size`` (ours: one call of
the train steps; the peer: 2 warm-up and 2 timed steps).
Prints one JSON line per case and a markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_MODEL = {"incp_unet": "incp", "conv_unet": "conv"}


def run_json(command, case=None):
    """Runs ``command`` under /usr/bin/time -v; (last JSON line [of ``case``], peak RSS MB)."""
    out = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True,
                         cwd=REPO, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-2000:]}")
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    result = next(r for r in lines if case is None or r.get("case") == case)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return result, rss_kb / 1024


def ours(model, size, steps, warmup=3):
    return run_json([sys.executable, "-m", "lungseg_jax.bench", f"--model={model}",
                     f"--image_size={size}", f"--steps={steps}", f"--warmup={warmup}"],
                    case="train_step")


def theirs(args, model, size, steps, variant):
    mode, channels_last = variant
    return run_json([args.peer_python, os.path.join(args.peer, "bench_torch.py"),
                     "--model", PEER_MODEL[model], "--size", str(size), "--steps", str(steps),
                     "--mode", mode, "--channels-last", str(channels_last)])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default=os.path.join(REPO, "..", "shared", "peers"))
    parser.add_argument("--peer_python", default=os.path.join(REPO, ".venv-peer", "bin",
                                                              "python"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cases", default="incp_unet:128,incp_unet:256,conv_unet:128,"
                                           "conv_unet:256")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow)")
    parser.add_argument("--memory_size", type=int, default=512, help="0 to skip")
    args = parser.parse_args()
    variants = [("eager", 0), ("eager", 1)] + ([("compile", 0)] if args.compile else [])

    rows, host = [], None
    for case in args.cases.split(","):
        model, size = case.split(":")
        size = int(size)
        ratios, mine, best = [], [], []
        for _ in range(args.rounds):
            our_step = ours(model, size, args.steps)[0]
            our_ips, host = our_step["images_per_sec"], our_step["host_cpu"]
            their_ips = max(theirs(args, model, size, args.steps, v)[0]["images_per_sec"]
                            for v in variants)
            ratios.append(our_ips / their_ips)
            mine.append(our_ips)
            best.append(their_ips)
        row = {"model": model, "image_size": size, "ours_images_per_sec": statistics.median(mine),
               "torch_best_images_per_sec": statistics.median(best),
               "ratio_median": round(statistics.median(ratios), 3),
               "ratios": [round(r, 3) for r in ratios]}
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\nHost CPU (ours, lungseg_jax.bench): {json.dumps(host)}")
    print("\n| model | size | ours img/s | best torch img/s | ratio ours/torch (median) | "
          "per round |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['image_size']} | {r['ours_images_per_sec']:.2f} | "
              f"{r['torch_best_images_per_sec']:.2f} | {r['ratio_median']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |")

    if args.memory_size:
        print("\n| model | size | ours peak RSS MB | torch (eager NCHW) peak RSS MB |\n"
              "|---|---|---|---|")
        for model in sorted({c.split(':')[0] for c in args.cases.split(",")}):
            _, our_mb = ours(model, args.memory_size, 2, warmup=0)
            _, their_mb = theirs(args, model, args.memory_size, 2, ("eager", 0))
            print(json.dumps({"case": "peak_memory", "model": model,
                              "image_size": args.memory_size, "ours_mb": our_mb,
                              "torch_mb": their_mb}), flush=True)
            print(f"| {model} | {args.memory_size} | {our_mb:.0f} | {their_mb:.0f} |")


if __name__ == "__main__":
    main()
