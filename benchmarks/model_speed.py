"""Model size and CPU speed: parameters, FLOPs per image, inference and training time.

    python benchmarks/model_speed.py [--size 128] [--encoders unet hybrid vit]

For each encoder, the default multi-task model (cls + seg + box heads) is measured:
forward FLOPs per image (torch.utils.flop_counter, counting a multiply-add as 2), inference
milliseconds per image at batch 1 on one thread, and a training step (forward + losses +
backward) of a batch of 16 on all threads. The target for the default ``unet`` is
<= 15 ms per 128 px image on one core.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from senolab.models import build_model, multitask_losses


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_image(model: torch.nn.Module, size: int) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model({"image": torch.rand(1, 1, size, size)})
    return counter.get_total_flops()


def median_seconds(fn, repeats: int, warmup: int = 3, clock=time.perf_counter) -> float:
    """Median duration of ``fn()``; ``clock=time.thread_time`` counts only this thread's CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def inference_ms(model: torch.nn.Module, size: int, repeats: int, clock=time.perf_counter) -> float:
    """Milliseconds per image at batch 1 on one thread (wall clock, or ``clock``).

    With one torch thread the work runs in the calling thread, so ``time.thread_time``
    gives its CPU time: what the wall clock would read on an otherwise idle core.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    batch = {"image": torch.rand(1, 1, size, size)}
    try:
        with torch.inference_mode():
            return 1000 * median_seconds(lambda: model(batch), repeats, clock=clock)
    finally:
        torch.set_num_threads(threads)


def synthetic_batch(batch_size: int, size: int) -> dict[str, torch.Tensor]:
    mask = torch.zeros(batch_size, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    return {
        "image": torch.rand(batch_size, 1, size, size),
        "mask": mask,
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
        "label": torch.arange(batch_size) % 3,
        "has_label": torch.ones(batch_size, dtype=torch.bool),
        "bbox": torch.tensor([[0.25, 0.25, 0.5, 0.5]]).repeat(batch_size, 1),
        "has_bbox": torch.ones(batch_size, dtype=torch.bool),
    }


def train_step_seconds(model: torch.nn.Module, size: int, batch_size: int, repeats: int) -> float:
    model.train()
    batch = synthetic_batch(batch_size, size)

    def step():
        model.zero_grad(set_to_none=True)
        sum(multitask_losses(model(batch), batch).values()).backward()

    return median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--encoders", nargs="+", default=["unet", "hybrid", "vit"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.size} px images")
    print(f"{'encoder':8} {'params':>9} {'enc params':>10} {'GFLOP/img':>9} {'infer ms/img (1 core)':>22} "
          f"{'train s/batch':>13} {'train img/s':>11}")
    for name in args.encoders:
        torch.manual_seed(0)
        model = build_model(name, encoder_options={"image_size": args.size} if name == "vit" else None)
        flops = flops_per_image(model, args.size)
        infer = inference_ms(model, args.size, args.repeats)
        train = train_step_seconds(model, args.size, args.batch_size, max(args.repeats // 4, 3))
        print(f"{name:8} {count_params(model) / 1e6:8.2f}M {count_params(model.encoder) / 1e6:9.2f}M "
              f"{flops / 1e9:9.2f} {infer:22.1f} {train:13.2f} {args.batch_size / train:11.1f}")


if __name__ == "__main__":
    main()
