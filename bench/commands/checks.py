"""The regression check and its measurements, the speed benchmark, and the GPU's first runs: check,
spread, power, speed, speed-report, gpu-check, gpu-session."""

from __future__ import annotations

import argparse

from bench.config import CHECK_PARTS
from bench.data import data_dir
from bench.errors import BenchError
from bench.records import write_json_atomic, write_text_atomic
from dip.nets.config import SkipNetConfig, check_input_size


def cmd_check(args: argparse.Namespace) -> int:
    from bench import regression

    parts = list(CHECK_PARTS) if args.part == "all" else [args.part]
    directory = data_dir(args.data_dir)
    if args.record:
        for part in parts:
            path = regression.record(part, directory, args.work_dir, args.goldens_dir)
            print(f"{part}: new golden written to {path}; commit it with the reason for the change")
        return 0
    results = []
    for part in parts:
        result = regression.run_check(part, directory, args.work_dir, args.goldens_dir, args.images)
        results.append(result)
        for note in result.notes:
            print(f"note ({part}): {note}")
        for line in result.lines[:-1]:
            print(f"FAIL {line}")
        print(("OK " if result.ok else "FAIL ") + result.lines[-1])
    if args.json:
        write_json_atomic(args.json, {"results": [r.to_dict() for r in results]})
    return 0 if all(r.ok for r in results) else 1


def cmd_spread(args: argparse.Namespace) -> int:
    from bench.spread import measure, write_spread

    data_dir(args.data_dir)  # checked here, before ten minutes of subprocesses
    spread = measure(args.work_dir)
    write_spread(spread, args.work_dir, args.out)
    print(f"Spread written to {args.out} and {args.out.with_suffix('.json')}")
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from bench.mutations import measure_power, select_mutations, write_power

    mutations = select_mutations(args.mutations)
    results = measure_power(mutations, data_dir(args.data_dir), args.work_dir)
    write_power(results, args.out)
    missed = [r["name"] for r in results if not r["caught"] and not r["blind_spot"]]
    suite = [r for r in results if not r["blind_spot"] and r["name"] != "unmodified"]
    print(f"Power report written to {args.out}: {len(suite) - len(missed)} of {len(suite)} mutations caught"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 0 if not missed else 1


def check_size(size: int) -> None:
    """The paper network must be able to take a size x size image."""
    try:
        check_input_size(size, size, SkipNetConfig())
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# The speed gate by the fast path's precision. bf16 on AMX or AVX-512 BF16: measured 2.8x (Intel AMX) and
# 2.3-2.6x (AMD EPYC) at 256x256. fp32 (no bf16 instructions, or an instruction-set cap below them): the
# fast path differs by fused Adam, and where the convolutions run AVX2 by Winograd's 3x3 convolutions:
# measured about 1.0x without them, 1.2-1.26x with them (AMD EPYC under ONEDNN_MAX_CPU_ISA=AVX2); the gate
# then only catches a fast path that became slower than the reference.
SPEED_GATES = {"bf16": 1.8, "fp16": 1.8, "fp32": 0.8}


def cmd_speed(args: argparse.Namespace) -> int:
    from bench.speed import measure_batched, measure_ratio

    if args.rounds < 1 or args.steps < 1 or args.cells < 1:
        raise BenchError("--rounds, --steps and --cells must be >= 1")
    check_size(args.size)
    m = measure_ratio(args.size, rounds=args.rounds, steps=args.steps, device=args.device, authors=args.authors)
    print(
        f"{m.size}x{m.size}: reference ({m.reference_precision}) {m.reference_s * 1e3:.0f} ms/iter, "
        f"fast ({m.fast_precision}{', Winograd' if m.fast_winograd else ''}{', 1x1 matmuls' if m.fast_matmul_1x1 else ''}{', heap kept' if m.fast_keep_heap else ''}) {m.fast_s * 1e3:.0f} ms/iter: speed-up {m.ratio:.2f}x "
        f"(median of {m.rounds} alternating rounds of {m.steps_per_round} steps)"
    )
    if m.authors_s is not None:
        print(f"{m.size}x{m.size}: the authors' code (fp32, eager) {m.authors_s * 1e3:.0f} ms/iter: "
              f"fast path {m.fast_vs_authors:.2f}x, reference path {m.authors_s / m.reference_s:.2f}x its speed")
    if args.cells > 1:
        b = measure_batched(args.size, args.cells, rounds=args.rounds, steps=args.steps, device=args.device)
        print(f"{b.size}x{b.size}: {b.cells} cells as one batched model {b.batched_s * 1e3:.0f} ms per cell-iteration, "
              f"alone one after another {b.alone_s * 1e3:.0f}: batching {b.ratio:.2f}x")
    required = SPEED_GATES[m.fast_precision] if args.gate else args.min_ratio
    if required is not None and m.ratio < required:
        print(f"FAIL speed-up {m.ratio:.2f}x is below the required {required:g}x")
        return 1
    if required is not None:
        print(f"OK speed-up {m.ratio:.2f}x >= {required:g}x")
    return 0


def cmd_speed_report(args: argparse.Namespace) -> int:
    from bench.analysis.speed_report import load_benchmarks, render_speed
    from bench.speed import operator_profile

    check_size(args.profile_size)
    data, *others = [load_benchmarks(path) for path in args.json]
    profiles = {path: operator_profile(path, args.profile_size, device=args.device) for path in ("reference", "fast")}
    text = render_speed(data, profiles, args.profile_size, tuple(others))
    write_text_atomic(args.out, text)
    print(text)
    print(f"Speed report written to {args.out}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from bench.gpu_check import CHECK_RECORD, gpu_check, part_line, require_cuda

    require_cuda()  # before the data directory is looked at: no GPU is the likeliest problem
    record = gpu_check(data_dir(args.data_dir), args.work_dir,
                       on_part=lambda part, result: print(part_line(part, result), flush=True))
    print(f"Record written to {args.work_dir / CHECK_RECORD}; attach it to an issue about this GPU")
    return 0 if record["ok"] else 1


def cmd_gpu_session(args: argparse.Namespace) -> int:
    from bench.offline import require_modules

    require_modules()  # before anything imports them: a missing one is a line naming its wheel, not a traceback
    from bench.gpu_session import SessionOptions, gpu_session

    options = SessionOptions(out=args.out, budget_s=args.budget, rehearse=args.rehearse,
                             data_dir=data_dir(args.data_dir))
    return gpu_session(options)
