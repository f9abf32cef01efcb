"""Inference speed against batch size: the evidence for `config.INFERENCE_BATCH_SIZE`.

    python benchmarks/inference_batch.py                              # 478 lesions, batches 16-256, fp32 and auto
    python benchmarks/inference_batch.py --batch-sizes 32,64 --precisions fp32 --rounds 3

Times `predict_probabilities` (the path of evaluate, the validation passes and predict without TTA) over one
test split's worth of 3 × 35³ lesions (478, the paper's) with a seeded paper net. Each (batch, precision) runs
in a fresh process, in alternating rounds, after one untimed pass over the same lesions, so the figure is the
steady state of a job like `mslesion evaluate`. Prints patches per second (median over rounds) and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import cpu_description  # noqa: E402

from mslesion.inference import predict_probabilities  # noqa: E402
from mslesion.model import LesionNet  # noqa: E402


def worker(batch_size: int, precision: str, lesions: int) -> float:
    """Seconds for one pass over `lesions` patches, after an untimed one."""
    torch.manual_seed(0)
    model, images = LesionNet(3, 2, 35).eval(), torch.randn(lesions, 3, 35, 35, 35) * 0.02
    predict_probabilities(model, images, batch_size, "cpu", precision=precision)
    started = time.perf_counter()
    predict_probabilities(model, images, batch_size, "cpu", precision=precision)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--lesions", type=int, default=478)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("BATCH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.lesions)))
        return
    cases = [(int(b), p) for p in args.precisions.split(",") for b in args.batch_sizes.split(",")]
    seconds: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for batch, precision in cases:
            command = [sys.executable, __file__, "--worker", str(batch), precision, "--lesions", str(args.lesions),
                       "--threads", str(args.threads)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            seconds[(batch, precision)].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{cpu_description()['model']}; torch {torch.__version__}, {args.threads} threads, {args.lesions} lesions, "
          f"median of {args.rounds} rounds (patches/s)")
    print("| precision | " + " | ".join(f"batch {b}" for b in dict.fromkeys(b for b, _ in cases)) + " |")
    print("|---" * (1 + len(dict.fromkeys(b for b, _ in cases))) + "|")
    for precision in dict.fromkeys(p for _, p in cases):
        rates = [args.lesions / statistics.median(seconds[(b, p)]) for b, p in cases if p == precision]
        print(f"| {precision} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
