"""Where a training step's (or one subject's TTA) time goes: the convolutions against the rest (torch.profiler, CPU).

    python benchmarks/profile_step.py                   # batch 128, 2 threads, `--precision auto`, 3 steps
    python benchmarks/profile_step.py --batch-size 64 --precision fp32 --rows 20
    python benchmarks/profile_step.py --what tta        # one subject: 50 lesions × 48 symmetries, batch 128

`train` profiles the same step `train_speed.py` times as "ours" (augmentation gather, fused channels-last net,
autocast, loss, backward, Adam) after `--warmup` untimed steps; `tta` the same subject as its TTA part. Prints the
busiest operators by self time and the share of the convolutions (forward and backward kernels) in the total. On
a machine whose convolutions run near the GEMM peak, the rest is memory-bound passes over block 1's 64×33³ output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import cpu_description, our_train_step, tta_subject_inputs  # noqa: E402

from mslesion import runtime  # noqa: E402
from mslesion.inference import predict_probabilities  # noqa: E402

CONVOLUTION_KERNELS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="train", choices=("train", "tta"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime.keep_freed_memory()
    step = our_train_step(args.batch_size, args.precision) if args.what == "train" else \
        tta_subject(args.batch_size, args.precision)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    convolution = sum(e.self_cpu_time_total for e in events if e.key in CONVOLUTION_KERNELS)
    cpu = cpu_description()
    print(f"{cpu['model']}; {args.what}, batch {args.batch_size}, {args.threads} threads, precision {args.precision}, "
          f"{args.steps} steps: {total / 1e6 / args.steps:.2f} s per step")
    print(f"convolutions {convolution / total:.0%} of the self time, everything else {1 - convolution / total:.0%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


def tta_subject(batch_size: int, precision: str):
    """One subject as train_speed.py's TTA part times it: 50 lesions × 48 symmetries."""
    model, lesions = tta_subject_inputs()
    return lambda: predict_probabilities(model, lesions, batch_size, "cpu", tta=True, precision=precision)


if __name__ == "__main__":
    main()
