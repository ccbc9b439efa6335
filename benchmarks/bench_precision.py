"""One SGD step on the CPU: fp32 against bf16 autocast, contiguous against channels_last.

    python benchmarks/bench_precision.py [--threads 1] [--steps 10] [--compile] [--widths] [--out PATH]

For each network the book trains (the 10 x 512 MLP at batch 2,000; ResNet20 x1 and VGG11 x1 at batch
100, Fashion-MNIST-sized inputs) this times the SGD step that ``repairlib.train.fit`` runs (forward,
cross-entropy, backward, SGD with momentum) on one fixed random batch, so data loading is left out, in
the four combinations of precision and memory format (the MLP has no memory format to choose). Each
timing is the process CPU time of ``--steps`` steps after three warm-up steps, the median of three
rounds. Writes benchmarks/results/bench_precision.json (or ``--out``) with the CPU's name, torch's CPU capability and
whether the CPU has bf16 in hardware (``repairlib.train.native_bf16``). ``--compile`` adds, for each
network, the fastest eager combination (bf16, channels_last for the conv nets) run through
``torch.compile`` (inductor), timed the same way after its compiling first steps, whose wall time is
recorded as ``compile_seconds``. ``--widths`` times BatchNorm ResNet20s at widths x0.25 to x2 instead
and adds, from ``torch.profiler``, the share of each bf16 channels_last step spent in convolutions (forward
and backward) and in the first stage's convolutions (28 x 28 feature maps) alone.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from repairlib import models, train

OUT = Path(__file__).parent / "results" / "bench_precision.json"
CASES = {  # name -> (model config, batch, input shape)
    "mlp 10x512": ({"arch": "mlp", "depth": 10, "width": 512}, 2000, (1, 28, 28)),
    "resnet20 x1": ({"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1}, 100, (1, 28, 28)),
    "vgg11 x1": ({"arch": "vgg", "depth": 11, "width": 1, "in_channels": 1}, 100, (1, 28, 28)),
}

WIDTHS = {f"resnet20 x{w:g}": ({"arch": "resnet20", "width": w, "norm": "bn", "in_channels": 1}, 100, (1, 28, 28))
          for w in (0.25, 0.5, 1, 2)}


def sgd_step(config: dict, batch: int, shape: tuple, bf16: bool, channels_last: bool, compiled: bool = False):
    """One SGD step of ``config`` (seed 0) on a fixed batch of ``batch`` random inputs of ``shape``, as a
    function of no arguments: forward under bf16 autocast or not, cross-entropy, backward, SGD with
    momentum, in ``channels_last`` memory format or contiguous, the forward through ``torch.compile``
    with ``compiled``."""
    torch.manual_seed(0)
    model = models.build(config).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_seconds(config: dict, batch: int, shape: tuple, bf16: bool, channels_last: bool, steps: int,
                 compiled: bool = False) -> tuple:
    """(median CPU seconds of one SGD step of ``config`` on a batch of ``batch`` random inputs, wall seconds
    of the three warm-up steps: the compile time with ``compiled``)."""
    step = sgd_step(config, batch, shape, bf16, channels_last, compiled)
    warm_start = time.perf_counter()
    for _ in range(3):
        step()
    warm_up = time.perf_counter() - warm_start
    rounds = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(steps):
            step()
        rounds.append((time.process_time() - start) / steps)
    return statistics.median(rounds), warm_up


def conv_shares(config: dict, batch: int, shape: tuple, steps: int = 5) -> dict:
    """Shares of one bf16 channels_last SGD step's profiled CPU time spent in convolutions (forward and
    backward) and in those whose input is a first-stage feature map (the input's height, e.g. 28)."""
    step = sgd_step(config, batch, shape, bf16=True, channels_last=True)
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    rows = prof.key_averages(group_by_input_shape=True)
    total = sum(r.self_cpu_time_total for r in rows)
    conv = [r for r in rows if r.key in ("aten::convolution_backward", "aten::mkldnn_convolution")]
    first = [r for r in conv if r.input_shapes and len(r.input_shapes[0]) == 4 and r.input_shapes[0][2] == shape[-2]]
    return {"conv_share": round(sum(r.self_cpu_time_total for r in conv) / total, 3),
            "first_stage_conv_share": round(sum(r.self_cpu_time_total for r in first) / total, 3)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time the bf16 step under torch.compile")
    p.add_argument("--widths", action="store_true", help="time ResNet20s at widths x0.25-x2 instead")
    p.add_argument("--out", type=Path, default=OUT, help="where the JSON record goes (written atomically)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (config, batch, shape) in (WIDTHS if args.widths else CASES).items():
        formats = (False,) if config["arch"] == "mlp" else (False, True)
        variants = [(channels_last, bf16, False) for channels_last in formats for bf16 in (False, True)]
        if args.compile:
            variants.append((formats[-1], True, True))
        for channels_last, bf16, compiled in variants:
            seconds, warm_up = step_seconds(config, batch, shape, bf16, channels_last, args.steps, compiled)
            rows.append({"network": name, "batch": batch, "bf16": bf16, "channels_last": channels_last,
                         "compiled": compiled, "cpu_ms_per_step": round(1000 * seconds, 1),
                         "images_per_cpu_second": round(batch / seconds, 1),
                         **({"compile_seconds": round(warm_up, 1)} if compiled else {})})
            print(f"{name:>12} {'channels_last' if channels_last else 'contiguous':>13} "
                  f"{'bf16' if bf16 else 'fp32'}{' compiled' if compiled else ''}: {1000 * seconds:7.1f} CPU ms/step, "
                  f"{batch / seconds:8.0f} img/CPU s", flush=True)
        if args.widths:
            rows.append({"network": name, "batch": batch, **conv_shares(config, batch, shape)})
            print(f"{name:>12} shares of a bf16 channels_last step: {rows[-1]}", flush=True)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(),
              "load_1min": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": train.native_bf16("cpu"),
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
