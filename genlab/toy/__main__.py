"""`python -m genlab.toy bench`: every family at its default settings on the same data and budget.

Prints one markdown row per family and dataset: the energy distance of 2000 samples to fresh data
(a second draw of the dataset), the same for one Gaussian fitted to the training data, their ratio
(the bar is 1/3), training wall time and steps per second, and the time to draw 2000 samples. The
families train as the app's "All four" does (`toy.train_all`, in turns), whose wall time is the last table.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import DEFAULT_STEPS, FAMILIES, dataset, energy_distance, gaussian_fit, make, train_all


def bench(datasets: list[str], steps: int, n: int, seed: int) -> None:
    rows, totals = [], []
    for name in datasets:
        data = dataset(name, n=n, seed=seed)
        fresh = dataset(name, n=n, seed=seed + 1)
        baseline = energy_distance(gaussian_fit(data, n=n, seed=seed + 2), fresh)
        models = {family: make(family, seed=seed) for family in FAMILIES}
        started = time.perf_counter()
        for _ in train_all(models, data, steps=steps, every=100):
            pass
        totals.append((name, time.perf_counter() - started))
        for family, model in models.items():
            sampling = time.perf_counter()
            samples = model.sample(n=n, seed=seed + 3)
            sampling = time.perf_counter() - sampling
            distance = energy_distance(samples, fresh)
            rows.append(f"| {family} | {name} | {distance:.4f} | {baseline:.4f} | {distance / baseline:.3f} | "
                        f"{model.seconds:.1f} | {steps / model.seconds:.0f} | {sampling * 1000:.0f} |")
    print(f"{steps} training steps per family, {n} points, seed {seed}, {torch.get_num_threads()} CPU thread(s)\n")
    print("| family | dataset | energy distance | Gaussian fit | ratio | train (s) | steps/s | sample 2000 (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print('\n| "All four" (train_all) | dataset | wall time (s) |\n|---|---|---|')
    for name, seconds in totals:
        print(f"| {len(FAMILIES)} x {steps} steps | {name} | {seconds:.1f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.toy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("bench", help="energy distances and speed of the four families")
    command.add_argument("--datasets", default="moons,gaussians", help="comma-separated dataset names")
    command.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    command.add_argument("--n", type=int, default=2000, help="training points, samples and fresh points")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench(args.datasets.split(","), args.steps, args.n, args.seed)


if __name__ == "__main__":
    main()
