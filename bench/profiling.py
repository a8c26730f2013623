"""What the mesh's processes do with their CPU while a bench drives load, and how big they grow.

`Profile` runs `py-spy record` on each named process (raw collapsed stacks of active threads,
sampled without stopping the process) for a fixed number of seconds while the caller drives
load, then prints each process's busy cores and its heaviest functions: the share of samples
whose stack holds the function (inclusive). The collapsed stacks stay in the folder for
flamegraph.pl or speedscope.

`PeakRss` samples the resident set of each named process from /proc on a thread while the load
runs and keeps the largest.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

RATE = 200  # py-spy samples per second


class Profile:
    def __init__(self, pids: dict[str, int], seconds: float, folder: Path) -> None:
        self.seconds = int(seconds)
        self.folder = folder
        spy = Path(sys.executable).with_name("py-spy")
        self.recorders = {
            name: subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(self.seconds),
                    "--rate",
                    str(RATE),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--threads",
                    "--output",
                    str(folder / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }

    def report(self, top: int) -> None:
        """Wait for the recorders, then print each process's busy cores and heaviest functions."""
        for recorder in self.recorders.values():
            recorder.wait()
        for name in self.recorders:
            samples, ranked = heaviest(self.folder / f"{name}.txt", top)
            print(
                f"\n{name}: {samples / RATE / self.seconds:.2f} cores busy ({samples} samples); "
                f"share of them per function (inclusive), top {top}"
            )
            for share, function in ranked:
                print(f"  {share * 100:5.1f}%  {function}")
        print(f"\ncollapsed stacks (flamegraph.pl / speedscope input): {self.folder}")


def heaviest(path: Path, top: int) -> tuple[int, list[tuple[float, str]]]:
    """(samples, functions by the share of samples whose stack holds them), from collapsed
    stacks of active threads only: samples / rate is CPU-busy thread time."""
    counts: dict[str, int] = {}
    total = 0
    if not path.exists():  # py-spy could not attach (it says why on a terminal)
        return 0, []
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        samples = int(number)
        total += samples
        frames = {
            frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1] for frame in stack.split(";")
        }
        for frame in frames:
            counts[frame] = counts.get(frame, 0) + samples
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return total, [(n / max(total, 1), frame) for frame, n in ranked]


def rss_mb(pid: int) -> float:
    """A process's resident set now, in MB (10^6 bytes); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


class PeakRss:
    """The largest resident set each process reaches while the `with` block runs."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.start = {name: rss_mb(pid) for name, pid in pids.items()}
        self.peaks = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], rss_mb(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, pid in self.pids.items():
            self.peaks[name] = max(self.peaks[name], rss_mb(pid))
