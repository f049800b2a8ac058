"""The results page's "Applications" section (genlab.results): `make augment` on the page's diffusion
run and `make detect` on every image family's run, both trained there with their default configs.
(`make anomaly` trains its own runs without a class, so it is measured in the README instead.)"""

from __future__ import annotations

from pathlib import Path

from genlab.apps.augment import augment
from genlab.apps.detect import detect, image_families

QUICK = {"augment": {"n": 100, "seeds": 2, "train_steps": 20}, "detect": {"n_train": 100, "train_steps": 20}}


def section(runs: dict[str, Path], out_dir: Path, quick: bool) -> list[str]:
    """Markdown lines; `runs` {family: run folder}, `out_dir` where the JSON files go."""
    known = image_families()
    images = {f: run for f, run in runs.items() if f in known}
    if not images:
        return []
    lines = ["## Applications", "", "`make augment` and `make detect` (docs/applications.md) on the runs above.", ""]
    if "diffusion" in images:
        options = QUICK["augment"] if quick else {}
        a = augment({"run": str(images["diffusion"]), "out": str(out_dir / "augment.json"), **options})
        acc = a["accuracy"]
        lines += [
            f"Augmentation (diffusion run, {a['per_class']} real digits per class, {a['n_synthetic']} samples, "
            f"{a['seeds']} seeds): test accuracy {100 * acc['real']['mean']:.1f}% real only, "
            f"{100 * acc['real+synthetic']['mean']:.1f}% with the samples (gain {100 * a['gain']['mean']:+.1f} "
            f"+- {100 * a['gain']['std']:.1f} points), {100 * acc['synthetic']['mean']:.1f}% on samples only, "
            f"{100 * acc['all_real']['mean']:.1f}% on all real training digits.",
            "",
        ]
    options = QUICK["detect"] if quick else {}
    d = detect({"runs": ",".join(str(run) for run in images.values()), "out": str(out_dir / "detect.json"), **options})
    lines += ["| generator | detector AUROC (dedicated) | pooled | nn_dist_ratio |", "| --- | --- | --- | --- |"]
    for name, f in sorted(d["families"].items(), key=lambda kv: kv[1]["auroc_dedicated"]):
        lines.append(f"| `{name}` | {f['auroc_dedicated']:.3f} | {f['auroc_pooled']:.3f} | {f['nn_dist_ratio']:.2f} |")
    lines += ["", "AUROC 0.5: the samples pass for real digits; 1: every one is caught.", ""]
    return lines
