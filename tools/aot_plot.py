"""Plot a weak-scaling run of the ahead-of-time checker (``tools/aot.py --scaling --out FILE.json``): per-chip
memory against HBM, XLA's optimal_seconds and the estimated MFU of the SFT step, and the decoding step's time
against its HBM-bound time, over the slice sizes. All figures are XLA's estimates for the compiled TPU programs.

    .venv/bin/python tools/aot_plot.py aot_scaling.json docs/aot_scaling.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GiB = 1 << 30


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: aot_plot.py SCALING.json OUT.png", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        run = json.load(f)
    if run.get("kind") != "scaling":
        print(f"error: {argv[0]} is not a --scaling run of tools/aot.py", file=sys.stderr)
        return 2
    train = [r for r in run["reports"] if r["kind"] == "train" and not r["error"]]
    decode = [r for r in run["reports"] if r["kind"] == "decode" and not r["error"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    chips = [r["chips"] for r in train]
    axes[0].plot(chips, [r["total_bytes"] / GiB for r in train], "o-", label="SFT step, per chip")
    axes[0].axhline(train[0]["hbm_bytes"] / GiB, color="grey", ls="--", label="HBM")
    axes[0].set(xscale="log", xlabel="chips", ylabel="GiB", title="memory per chip")
    axes[1].plot(chips, [100 * r["mfu"] for r in train], "o-")
    axes[1].axhline(50, color="grey", ls="--", label="50%")
    axes[1].set(xscale="log", xlabel="chips", ylabel="MFU (%), estimated", title="SFT step: estimated MFU",
                ylim=(0, 100))
    axes[2].plot([r["chips"] for r in decode], [1e3 * r["optimal_seconds"] for r in decode], "o-",
                 label="optimal_seconds")
    axes[2].plot([r["chips"] for r in decode], [1e3 * r["hbm_seconds"] for r in decode], "s--",
                 label="bytes / HBM bandwidth")
    axes[2].set(xscale="log", xlabel="chips", ylabel="ms per token step", title="decoding step")
    for ax in axes:
        ax.set_xticks(chips, [str(c) for c in chips])
        ax.minorticks_off()
        ax.legend(fontsize=8) if ax.get_legend_handles_labels()[0] else None
    fig.suptitle(f"{run['model']} on TPU v5p, {run['rows_per_chip']} rows x {run['length']} tokens per chip, "
                 f"tensor={run.get('tensor', 1)}, remat={run['remat']} (XLA estimates, {run['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
