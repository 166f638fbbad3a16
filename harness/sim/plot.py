"""The figure for docs/deploy.md: messages each node sends per protocol period against N."""

from __future__ import annotations

import json
from pathlib import Path


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swim = sorted((int(n), r["steady"]["messages_per_node_per_period"]) for n, r in report["swim"].items())
    a2a = sorted((int(n), r["messages_per_node_per_period"]) for n, r in report["alltoall"].items())
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [n for n, _ in swim] + [n for n, _ in a2a]
    lo, hi = min(xs), max(xs)
    ax.plot([lo, hi], [2 * (lo - 1), 2 * (hi - 1)], ":", color="tab:red", label="all-to-all, 2 (N - 1): heartbeat + reply")
    if a2a:
        ax.plot(*zip(*a2a), "o", color="tab:red", label="all-to-all, simulated")
    ax.plot(*zip(*swim), "s-", color="tab:blue", label="SWIM, simulated (steady, no faults)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes in the grid (N)")
    ax.set_ylabel("messages sent per node per period (0.5 s)")
    ax.set_title(f"Membership traffic per node (seed {report['seed']})")
    ax.axvline(32, color="grey", lw=0.8)
    ax.text(33, 2.6, "auto: SWIM above 32", color="grey", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
