"""PNG figures of a compare report: AdaSparse masks per domain, AUC lift by domain-size bin,
and AUC against the sparsity band (the shapes of the AdaSparse paper's figure 3)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def pick_domains(keys: list[str]) -> list[str]:
    """Three domains, largest first: the largest, the largest that differs from it only in
    the last domain feature (similar), and the largest that shares no value with it."""
    first = keys[0].split("|")
    similar = next((k for k in keys[1:] if k.split("|")[:-1] == first[:-1]), None)
    different = next((k for k in keys[1:]
                      if all(a != b for a, b in zip(k.split("|"), first, strict=False))), None)
    return [k for k in (keys[0], similar, different) if k is not None]


def plot_masks(masks: dict, variant: str, path: str, layer: int = 0) -> str:
    """Binary masks (neuron kept in most of the domain's rows) of one layer for three domains."""
    domains = {k: v for k, v in masks.items() if k != "<unseen>"}
    keys = sorted(domains, key=lambda k: -domains[k]["rows"])
    chosen = pick_domains(keys)
    grid = np.array([np.array(domains[k]["keep_rate"][layer]) > 0.5 for k in chosen], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(chosen) + 1.2))
    ax.imshow(grid, cmap="Greys", aspect="auto", vmin=0, vmax=1)
    ax.set_yticks(range(len(chosen)), [f"{k} ({domains[k]['rows']} rows)" for k in chosen])
    ax.set_xlabel(f"neuron of MLP layer {layer} (black = kept)")
    ax.set_title(f"{variant}: layer {layer} masks of three domains")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bin_lift(report: dict, path: str) -> str:
    """AUC lift of each variant over the first, per domain-size bin (top -> long tail)."""
    names = report["variants"]
    base = np.array(report["results"][names[0]]["bins_auc"])
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(len(names) - 1, 1)
    for i, name in enumerate(names[1:]):
        lift = np.array(report["results"][name]["bins_auc"]) - base
        ax.bar(np.arange(len(base)) + i * width, lift, width, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(base)) + 0.4 - width / 2,
                  [f"bin {i + 1}\n{b['domains']} domains" for i, b in enumerate(report["bins"])])
    ax.set_ylabel(f"AUC lift over {names[0]}")
    ax.set_title("AUC lift by domain-size bin (largest domains first)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sparsity_band(report: dict, path: str) -> str | None:
    """AUC of the AdaSparse variants against their sparsity band [r_min, r_max], for the
    variants that differ only in the band (the first AdaSparse variant's backbone and form)."""
    ada = {n: c for n, c in report["configs"].items() if c["multi_domain"] == "adasparse"}
    if not ada:
        return None
    first = next(iter(ada.values()))
    points = []
    for name, cfg in ada.items():
        if (cfg["backbone"], cfg["form"]) == (first["backbone"], first["form"]):
            r = report["results"][name]
            points.append(((cfg["r_min"] + cfg["r_max"]) / 2, r["auc"]["mean"], r["auc"]["std"],
                           f"{cfg['r_min']}-{cfg['r_max']} {cfg['form']}"))
    if len(points) < 2:
        return None
    points.sort()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                marker="o", capsize=3)
    for x, y, _, label in points:
        ax.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("sparsity band centre (r_min + r_max) / 2")
    ax.set_ylabel("AUC")
    ax.set_title(f"AUC against the sparsity band ({first['backbone']}, {first['form']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(report: dict, masks: dict, folder: str) -> list[str]:
    """Writes every figure the report supports into folder; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    written = [plot_bin_lift(report, os.path.join(folder, "auc_lift_by_bin.png"))]
    if masks:
        variant = next(iter(masks))
        written.append(plot_masks(masks[variant], variant, os.path.join(folder, "masks.png")))
    band = plot_sparsity_band(report, os.path.join(folder, "auc_vs_sparsity_band.png"))
    if band:
        written.append(band)
    return written
