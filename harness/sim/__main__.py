"""`python -m harness.sim --nodes 100 300 1000 --seed 1`: the scenarios at each size, a JSON report, a plot."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .scenarios import CheckFailed, run_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.sim", description=__doc__)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100], help="grid sizes to simulate")
    ap.add_argument("--seed", type=int, default=1, help="one seed gives one run, every time")
    ap.add_argument("--minority", type=float, default=0.4, help="share of the grid cut off (with the leader)")
    ap.add_argument("--cut-periods", type=float, default=60, help="protocol periods the partition lasts")
    ap.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    ap.add_argument("--alltoall", type=int, nargs="*", default=[],
                    help="also simulate all-to-all heartbeats at these sizes (O(N^2) messages: keep them small)")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--plot", type=Path, help="draw messages per node per period against N here (PNG)")
    args = ap.parse_args(argv)
    if not 0 < args.minority < 0.5:
        ap.error("--minority must be above 0 and below 0.5")
    out: dict = {"seed": args.seed, "minority": args.minority, "loss": args.loss, "swim": {}, "alltoall": {}}
    for n in args.nodes:
        if n < 20:
            ap.error("--nodes: simulate at least 20 nodes (the scenarios crash 1 % and cut off a minority)")
        t = time.monotonic()
        try:
            rep = run_all(n, args.seed, minority=args.minority, cut_periods=args.cut_periods, loss=args.loss)
        except CheckFailed as e:
            print(f"FAILED at {n} nodes, seed {args.seed}: {e}", file=sys.stderr)
            return 1
        out["swim"][n] = {**rep.steps, "wall_s": round(time.monotonic() - t, 1)}
        print(f"{n} nodes: all checks passed in {time.monotonic() - t:.0f} s", file=sys.stderr)
    if args.alltoall:
        from .alltoall import steady
        for n in args.alltoall:
            out["alltoall"][n] = steady(n, args.seed)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    if args.plot:
        from .plot import plot
        plot(out, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
