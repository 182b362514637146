"""Simulator speed and memory against onnxruntime, on the same machine, in the same run.

    python benchmarks/bench.py                          # all models, batch 1 and 8
    python benchmarks/bench.py --models example --batch 64 --json out.json

For every model and machine it compiles once, then times onnxruntime (float32, the original ONNX
model, default session options: a thread per core) and the simulator on the *same* input batch,
in turns of a few warm runs each (``BLOCK``), and reports the median of ``--repeat`` runs as a
ratio (simulator seconds / onnxruntime seconds) and as images per second, and the best ratio: the
fastest run of each side (the cost of a run that no other work on a shared machine slowed;
medians of one process vary by up to ~50 % there, the fastest runs by a few %).
The simulator's time is its own ``simulation_wall_s`` (execution only, program loading excluded).

Machines: ``isaac8`` (lossless 8-bit ADC, so every crossbar takes the simulator's fast path) and
``isaac8-adc6`` (the same machine with a 6-bit ADC: no crossbar is lossless and every mvm runs the
full bit-serial path with ADC saturation). Peak memory is the peak resident set of a child process
that loads the program and runs the simulator once (so compile-time memory is not counted).

Models: the shipped MNIST example, and the ResNet-18-class and MobileNetV2-class models of
``benchmarks/models.py`` at 224x224 (random weights, generated into a temporary folder).
This is a benchmark, not a test: timings on a shared machine vary, which is why every figure is a
ratio to onnxruntime measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MACHINES = {"isaac8": {}, "isaac8-adc6": {"adc": {"bits": 6}}}
#: How the two sides are timed, so that neither slows the other (measured on a 2-vCPU machine):
#: in turns of BLOCK timed runs, each block after WARM_S of untimed runs of its side. Run by run,
#: each side found the caches the other had filled (onnxruntime's example run took 0.13 instead
#: of 0.04 ms) and the other's idle threads spinning beside it: onnxruntime's pool spins ~0.05 s
#: of CPU after a run, the BLAS threads of a one-image simulation ~0.1 s (the simulator's example
#: runs took 0.9 instead of 0.5 ms, onnxruntime's MobileNetV2 runs 15 instead of 4 ms). The warm
#: runs outlast that spinning; a pause instead would leave the core idle, and an idle core comes
#: back slow (the example's first run after a 0.2 s pause took 1.0 ms, the next ones 0.6–0.7).
#: The spinning can outlast 0.2 s: in one of three trials the simulator's example runs took 0.30
#: instead of 0.16 ms for 0.2 s after onnxruntime's last run (in the others, no change).
BLOCK = 3
WARM_S = 0.5


def _config(machine: str) -> dict:
    from pimc.hw import load_config
    from runtime.hwconfig import validate

    cfg = load_config("isaac8")
    for section, values in MACHINES[machine].items():
        cfg[section] = {**cfg[section], **values}
    return validate(cfg, machine)


def _model(name: str, workdir: Path) -> tuple[Path, np.ndarray, callable]:
    """(ONNX path, calibration batch, input maker(batch) -> array)."""
    if name == "example":
        ex = ROOT / "examples" / "mnist_cnn"
        test = np.load(ex / "test_images.npy")
        return ex / "model.onnx", np.load(ex / "calib.npy"), lambda b: np.resize(test, (b,) + test.shape[1:])
    import onnx

    from benchmarks.models import build_mobilenetv2, build_resnet18, random_inputs

    build = {"resnet18": build_resnet18, "mobilenetv2": build_mobilenetv2}[name]
    path = workdir / f"{name}.onnx"
    if not path.exists():
        onnx.save(build(), path)
    return path, random_inputs(8, seed=1), lambda b: random_inputs(b, seed=2)


def _ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _child(program_path: str, input_path: str, fast: bool) -> None:
    """Load a program, run it once, print its wall time and this process's peak RSS as JSON."""
    from runtime.container import load_program
    from runtime.executor import run_program

    program = load_program(program_path)
    x = np.load(input_path)
    _, report = run_program(program, {program.inputs[0].name: x}, fast_path=fast)
    print(json.dumps({"peak_mib": _peak_rss_kib() / 1024, "sim_s": report["simulation_wall_s"]}))


def _peak_rss_kib() -> int:
    """This process's peak resident set. ``VmHWM`` rather than ``ru_maxrss``: on Linux the latter
    carries the parent's peak across exec, so a child would report the benchmark's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _block(run, k: int) -> list[float]:
    """k timed runs of one side, after WARM_S of untimed runs (at least one): the other side's
    idle threads have stopped spinning, and this side's caches and threads are warm."""
    t0 = time.perf_counter()
    run()
    while time.perf_counter() - t0 < WARM_S:
        run()
    return [run() for _ in range(k)]


def bench_one(name: str, machine: str, batch: int, repeat: int, workdir: Path) -> dict:
    from pimc.driver import QuantOptions, compile_model
    from runtime.container import save_program
    from runtime.executor import run_program

    model_path, calib, make_input = _model(name, workdir)
    calib_path = workdir / f"{name}.calib.npy"
    np.save(calib_path, calib)
    t0 = time.perf_counter()
    program = compile_model(model_path, _config(machine), QuantOptions(calibration=str(calib_path))).program
    compile_s = time.perf_counter() - t0
    x = make_input(batch).astype(np.float32)
    sess = _ort_session(model_path)
    feed = {sess.get_inputs()[0].name: x}
    feed_sim = {program.inputs[0].name: x}

    def ort_run() -> float:
        t = time.perf_counter()
        sess.run(None, feed)
        return time.perf_counter() - t

    paths: set = set()

    def sim_run() -> float:
        _, report = run_program(program, feed_sim)
        paths.update(layer.get("path") for layer in report["layers"] if layer.get("crossbars"))
        return report["simulation_wall_s"]

    ort_t, sim_t = [], []
    while len(sim_t) < repeat:  # blocks of warm runs, the two sides in turn
        k = min(BLOCK, repeat - len(sim_t))
        ort_t += _block(ort_run, k)
        sim_t += _block(sim_run, k)
    ort_s, sim_s = statistics.median(ort_t), statistics.median(sim_t)

    prog_path, in_path = workdir / f"{name}.{machine}.pimx", workdir / f"{name}.{batch}.npy"
    save_program(program, prog_path)
    np.save(in_path, x)
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(prog_path), str(in_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    peak = json.loads(child.stdout.strip().splitlines()[-1])["peak_mib"]
    return {
        "model": name,
        "machine": machine,
        "batch": batch,
        "crossbars": len(program.xbars),
        "mvm_path": "+".join(sorted(p for p in paths if p)),
        "compile_s": round(compile_s, 2),
        "onnxruntime_s": ort_s,
        "simulator_s": sim_s,
        "ratio": sim_s / ort_s,
        # the fastest of the repeats, each side: what a run costs when nothing else on the machine
        # slows it (a shared machine's bursts reach single runs of either side)
        "onnxruntime_best_s": min(ort_t),
        "simulator_best_s": min(sim_t),
        "best_ratio": min(sim_t) / min(ort_t),
        "simulator_images_per_s": batch / sim_s,
        "onnxruntime_images_per_s": batch / ort_s,
        "simulator_peak_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="example,resnet18,mobilenetv2")
    ap.add_argument("--machines", default=",".join(MACHINES))
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", dest="json_path", default=None, help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("PROGRAM", "INPUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-bit-level", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], fast=not args.child_bit_level)
        return 0

    from rich.console import Console
    from rich.table import Table

    rows = []
    with tempfile.TemporaryDirectory(prefix="pimc-bench-") as tmp:
        for name in args.models.split(","):
            for machine in args.machines.split(","):
                for batch in (int(b) for b in args.batch.split(",")):
                    row = bench_one(name, machine, batch, args.repeat, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    table = Table(title="simulator vs onnxruntime (same machine, same run; medians of %d, and the best of them)" % args.repeat)
    for col in ("model", "machine", "batch", "xbars", "mvm path", "ORT s", "ISS s", "ratio", "best ratio", "ISS img/s", "peak MiB"):
        table.add_column(col, justify="left" if col in ("model", "machine", "mvm path") else "right")
    for r in rows:
        table.add_row(
            r["model"], r["machine"], str(r["batch"]), str(r["crossbars"]), r["mvm_path"],
            f"{r['onnxruntime_s']:.4f}", f"{r['simulator_s']:.4f}", f"{r['ratio']:.1f}x", f"{r['best_ratio']:.1f}x",
            f"{r['simulator_images_per_s']:.1f}", f"{r['simulator_peak_mib']:.0f}",
        )
    Console(width=160).print(table)
    if args.json_path:
        meta = {"cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.json_path).write_text(json.dumps({"machine": meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
