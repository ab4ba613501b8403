"""PNG plots of runs and searches (matplotlib, no display), logged as MLflow artifacts.

    run_curves(history, out)          # a run: training curves per objective, evaluations over steps
    search_scatter(rows, key, out)    # a search: the metric against one searched value
    asha_rungs(rows, out)             # a search: each trial's metric over its evaluations

``history``: metric name -> [(step, value), ...]. ``rows``: one dict per trial with ``trial``,
``status`` (done / stopped early / failed), ``score``, ``best`` (bool), the searched values and
``history`` (the score after each evaluation).
"""
from __future__ import annotations

from pathlib import Path

LOSSES = ("loss", "mlm_loss", "nsp_loss", "contrastive_loss")


def run_history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The losses and evaluations an MLflow run logged, over steps."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k in LOSSES or k.startswith("eval_")]
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_curves(history: dict[str, list[tuple[int, float]]], out: Path, title: str = "") -> Path | None:
    """Left: training losses per objective over steps. Right: held-out evaluations over steps
    (``eval_*`` metrics that are fractions: accuracy, Spearman)."""
    losses = {k: v for k, v in history.items() if k in LOSSES and v}
    evals = {k: v for k, v in history.items() if k.startswith("eval_") and v
             and not k.endswith(("_loss", "_tokens", "_pairs")) and not k.endswith("_initial")}
    if not losses and not evals:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, pts in sorted(losses.items()):
        s, v = zip(*sorted(pts))
        axes[0].plot(s, v, label=k)
    axes[0].set(title="training loss per objective", xlabel="step", ylabel="loss")
    axes[0].legend(fontsize=8)
    for k, pts in sorted(evals.items()):
        s, v = zip(*sorted(pts))
        axes[1].plot(s, v, marker="o", ms=3, label=k[len("eval_"):])
    axes[1].set(title="held-out evaluation", xlabel="step", ylabel="accuracy / Spearman ρ")
    if evals:
        axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


_STYLE = {"done": ("o", "tab:blue"), "stopped early": ("x", "tab:orange"), "failed": ("s", "tab:red")}


def search_scatter(rows: list[dict], key: str, out: Path, metric: str, log: bool = False) -> Path | None:
    """The metric of each trial against its value of ``key``; early-stopped trials are crosses,
    the best trial is circled."""
    pts = [r for r in rows if r.get(key) is not None and r.get("score") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for status, (marker, color) in _STYLE.items():
        sel = [r for r in pts if r["status"] == status]
        if sel:
            ax.scatter([r[key] for r in sel], [r["score"] for r in sel], marker=marker, c=color,
                       label=status, s=40)
    for r in pts:
        if r.get("best"):
            ax.scatter([r[key]], [r["score"]], s=220, facecolors="none", edgecolors="green",
                       linewidths=2, label="best")
    if log:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} against {key}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def asha_rungs(rows: list[dict], out: Path, metric: str, rungs: list[int]) -> Path | None:
    """Each trial's metric after each evaluation (``history``: (evaluation, value) pairs; a trial
    restored from a finished state may hold only its last); ASHA's rungs as vertical lines,
    early-stopped trials ending in a cross, the best trial thick."""
    lines = [r for r in rows if r.get("history")]
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in lines:
        x, y = zip(*r["history"])
        marker, color = _STYLE.get(r["status"], ("o", "gray"))
        ax.plot(x, y, color="green" if r.get("best") else color, lw=3 if r.get("best") else 1, alpha=0.9)
        ax.scatter([x[-1]], [y[-1]], marker=marker, c=color, s=40, zorder=3)
    for g in rungs:
        ax.axvline(g, color="gray", ls=":", lw=1)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="evaluation (tune.eval_every steps each)", ylabel=metric,
           title="trials over evaluations (dotted: ASHA rungs; x: stopped early)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
