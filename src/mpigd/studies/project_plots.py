"""projection.png: the projected strong and weak scaling curves and the strong terms."""

import os

from .plots import PARTS, check_available


def plot_projection(payload: dict, out: str) -> str:
    """Three panels: speedup (strong, with ideal), efficiency (strong and weak), the terms."""
    check_available()
    import matplotlib.pyplot as plt

    series = payload["series"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    speed, eff, parts = axes
    for kind, rows in series.items():
        ranks = [r["ranks"] for r in rows]
        if kind == "strong":
            speed.plot(ranks, [r["speedup"] for r in rows], "o-", label="projected speedup")
            speed.plot(ranks, ranks, ":", color="gray", label="ideal")
            bottom = [0.0] * len(rows)
            for key, label, color in (*PARTS, ("overhead_s", "fixed (the loop's own cost)", "tab:olive")):
                values = [1e3 * r[key] for r in rows]
                parts.bar(range(len(rows)), values, bottom=bottom, color=color, label=label)
                bottom = [b + v for b, v in zip(bottom, values)]
            parts.set_xticks(range(len(rows)), [str(m) for m in ranks], rotation=60, fontsize=7)
        eff.plot(ranks, [100 * r["efficiency"] for r in rows], "o-", label=f"{kind} scaling")
    top = payload.get("peak")
    if top:
        speed.axvline(top["ranks"], color="tab:red", lw=0.8)
        speed.annotate(f"peak {top['speedup']:.0f}x at {top['ranks']} ranks\n({top['bound_by']})",
                       (top["ranks"], top["speedup"]), textcoords="offset points", xytext=(-60, -40),
                       fontsize=8)
    for ax in (speed, eff):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_yscale("log", base=2)
    speed.set_ylabel("speedup T(1)/T(m)")
    eff.set_ylabel("efficiency (%)")
    eff.set_ylim(0, 105)
    parts.set_yscale("log")
    parts.set_ylabel("ms per iteration (strong)")
    parts.set_xlabel("ranks")
    parts.legend(fontsize=7)
    fig.suptitle(f"projection from {os.path.basename(payload['baseline']['source'])}: "
                 f"{payload['network']['label']}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "projection.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
