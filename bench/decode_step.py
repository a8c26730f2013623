"""One decode step of the HF engine's batch under each OpenMP setting, in fresh processes.

    python bench/decode_step.py [--model tiny-llama] [--rows 1,8] [--steps 100] [--rounds 2]

A decode step is what a new stream's first token may wait for behind the running batch
(services/engine_hf/generation.py admits, prefills and answers new requests between two
steps). For each setting, (`--omp_wait_policy` default/passive, `--num_threads` 2/1) a
fresh process (OpenMP reads its wait policy when torch loads) prefills `rows` 25-token
prompts with the engine's `CausalBatch` and times `--steps` decode steps: wall and CPU
milliseconds per step. Settings alternate round by round, so load from elsewhere on the
machine hits each alike; the table shows each setting's median over rounds and the load
average. On cores shared with busy processes, spinning OpenMP threads wait at every
parallel region for a thread that is not running (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {
    "default, 2 threads": ("", 2),
    "passive, 2 threads": ("PASSIVE", 2),
    "default, 1 thread": ("", 1),
}

CHILD = """
import json, sys, time, torch
from transformers import AutoModelForCausalLM
from services.engine_hf.decoding import CausalBatch
folder, threads, rows_list, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
out = {}
with torch.inference_mode():
    for rows in map(int, rows_list.split(",")):
        batch, _ = CausalBatch.prefill(model, [list(range(5, 30))] * rows, 0)
        for _ in range(5):
            batch.decode([7] * rows)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            batch.decode([7] * rows)
        out[rows] = ((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
print(json.dumps(out))
"""


def measure(folder: str, policy: str, threads: int, rows: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [sys.executable, "-c", CHILD, folder, str(threads), rows, str(steps)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--rows", default="1,8", help="batch sizes (comma-separated)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from services.models.cache import ensure_model

    folder = str(ensure_model(args.model))
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    loads = []
    for _ in range(args.rounds):
        for name, (policy, threads) in SETTINGS.items():
            results[name].append(measure(folder, policy, threads, args.rows, args.steps))
            loads.append(os.getloadavg()[0])
    print(
        f"\ndecode step: {args.model}, {args.steps} steps, median of {args.rounds} rounds, "
        f"load average {min(loads):.1f}-{max(loads):.1f}"
    )
    rows = args.rows.split(",")
    print(f"{'OpenMP':<22}" + "".join(f"{f'{r} rows wall':>14}{'CPU':>9}" for r in rows))
    for name, runs in results.items():
        cells = ""
        for r in rows:
            wall = statistics.median(run[r][0] for run in runs) * 1000
            cpu = statistics.median(run[r][1] for run in runs) * 1000
            cells += f"{wall:>12.2f}ms{cpu:>7.2f}ms"
        print(f"{name:<22}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
