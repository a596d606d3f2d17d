"""The paper's Table 2 on the digits: held-out bits/dim of VE, VP and sub-VP, each trained with the
σ² weighting and with likelihood weighting + importance sampling, under one equal budget.

Every run is ``configs/digits_nll.py`` (dequantized 17-level digits, the same network, optimizer
and step count) with its SDE and weighting changed; VE models see the data in [0, 1] with
``sigma_max`` the largest distance between two training digits and scale their output by 1/σ, as the
paper's VE models do. Each run trains with ``main.py --mode=train`` and is evaluated with
``--mode=eval`` (bits/dim of the 300 held-out digits as 17-level data, its standard error over the
images, and the per-pixel histogram and full-covariance Gaussian baselines on the same images).
Runs live in ``--root`` (default ``runs/likelihood_table``) and resume: a killed table continues
where it stopped. Writes ``likelihood_table.json`` and ``likelihood_table.md`` into ``--out``
(default ``docs/``).

Needs nothing downloaded. Budget: ``--steps`` training steps per run (default 6000, as
digits_nll; about 25 minutes per run on 2 CPU cores), six runs per seed.

Run: ``python benchmarks/likelihood_table.py [--steps 6000] [--seeds 1] [--root DIR] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np
from common import hardware

ROOT = pathlib.Path(__file__).resolve().parent.parent
SDES = ("vesde", "vpsde", "subvpsde")
WEIGHTINGS = {
    "sigma2": ("--config.training.likelihood_weighting=False",
               "--config.training.importance_weighting=False"),
    "likelihood_is": ("--config.training.likelihood_weighting=True",
                      "--config.training.importance_weighting=True"),
}  # fmt: skip
LABELS = {"sigma2": "σ² weighting", "likelihood_is": "likelihood weighting + IS"}


def ve_sigma_max() -> float:
    """The largest Euclidean distance between two training digits in [0, 1]."""
    from sklearn.datasets import load_digits

    from sde_jax.data.digits import split_indices

    digits = load_digits()
    x = digits.images[split_indices(digits.target)["train"]].reshape(-1, 64) / 16.0
    sq = np.sum(x**2, axis=1)
    return float(math.sqrt(np.max(sq[:, None] + sq[None, :] - 2 * x @ x.T)))


def overrides(sde: str, weighting: str, steps: int, seed: int) -> list[str]:
    out = [
        f"--config.sde.name={sde}",
        *WEIGHTINGS[weighting],
        f"--config.training.n_iters={steps}",
        f"--config.training.snapshot_freq={steps}",
        f"--config.eval.begin_step={steps}",
        f"--config.seed={seed}",
    ]
    if sde == "vesde":
        out += [
            "--config.data.centered=False",
            "--config.model.scale_by_sigma=True",
            "--config.model.embedding_type=fourier",
            f"--config.sde.sigma_max={ve_sigma_max():.4f}",
            "--config.sde.sigma_min=0.01",
        ]
    return out


def run(mode: str, workdir: pathlib.Path, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "main.py"),
        f"--mode={mode}",
        f"--config={ROOT / 'configs' / 'digits_nll.py'}",
        f"--workdir={workdir}",
        *extra,
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def table(results: list[dict], steps: int) -> str:
    base = results[0]["report"]
    lines = [
        f"Held-out bits/dim of the 300 test digits as 17-level data (uniform dequantization), "
        f"after {steps} training steps of `configs/digits_nll.py` per run; ± is the standard error "
        "over the images (each with one dequantization and one Hutchinson probe).",
        "",
        "| SDE | weighting | seed | bits/dim | minus histogram | training time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        rep = r["report"]
        diff = rep["bpd_baselines"]["histogram"]
        lines.append(
            f"| {r['sde']} | {LABELS[r['weighting']]} | {r['seed']} | "
            f"{rep['bpd']:.3f} ± {rep['bpd_stderr']:.3f} | "
            f"{diff['model_minus_baseline']:+.3f} ± {diff['difference_stderr']:.3f} | "
            f"{r['train_s'] / 60:.0f} min |"
        )
    lines += [
        "",
        f"Baselines on the same images: independent per-pixel histogram "
        f"{base['bpd_histogram']:.3f}, full-covariance Gaussian {base['bpd_gaussian']:.3f}.",
        "",
        "Paired differences over the same 300 images (first minus second, ± standard error of the "
        "per-image differences; negative: the first has the lower bits/dim):",
        "",
    ]
    lines += [f"- {a} minus {b}: {d:+.3f} ± {se:.3f}" for a, b, d, se in paired(results)]
    return "\n".join(lines) + "\n"


def paired(results: list[dict]) -> list[tuple[str, str, float, float]]:
    """The paper's two claims as paired per-image differences of seed 0: likelihood weighting +
    IS against σ² weighting for each SDE, and sub-VP against VP and VE for each weighting."""
    by = {(r["sde"], r["weighting"]): np.asarray(r["per_image"]) for r in results if r["seed"] == 0}
    name = lambda sde, w: f"{sde} {LABELS[w]}"
    pairs = [((sde, "likelihood_is"), (sde, "sigma2")) for sde in SDES]
    pairs += [(("subvpsde", w), (other, w)) for w in WEIGHTINGS for other in ("vpsde", "vesde")]
    out = []
    for a, b in pairs:
        if a in by and b in by:
            d = by[a] - by[b]
            out.append(
                (name(*a), name(*b), float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))))
            )
    return out


def per_image_bpd(workdir: pathlib.Path, steps: int) -> list[float]:
    """The evaluation's per-image bits/dim (mean over its repeats) at ``steps``."""
    saved = json.loads((workdir / "eval" / f"step_{steps}.json").read_text())["bpd"]["repeats"]
    per_repeat = [np.concatenate(saved[str(r)]) for r in range(len(saved))]
    return np.mean(per_repeat, axis=0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--root", default=str(ROOT / "runs" / "likelihood_table"))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--sdes", nargs="+", default=list(SDES), choices=SDES)
    parser.add_argument("--weightings", nargs="+", default=list(WEIGHTINGS), choices=WEIGHTINGS)
    args = parser.parse_args()
    print(hardware(), flush=True)
    results = []
    for seed in range(args.seeds):
        for sde in args.sdes:
            for weighting in args.weightings:
                workdir = pathlib.Path(args.root) / f"{sde}-{weighting}-seed{seed}-{args.steps}"
                extra = overrides(sde, weighting, args.steps, seed)
                timing = workdir / "train_seconds.json"
                if not timing.exists():
                    start = time.perf_counter()
                    run("train", workdir, extra)
                    timing.write_text(json.dumps(time.perf_counter() - start))
                run("eval", workdir, extra)
                report = json.loads((workdir / "eval" / "report.json").read_text())
                entry = report[str(args.steps)]
                results.append(
                    dict(
                        sde=sde, weighting=weighting, seed=seed, report=entry,
                        train_s=json.loads(timing.read_text()),
                        per_image=per_image_bpd(workdir, args.steps),
                    )
                )  # fmt: skip
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "likelihood_table.json").write_text(
        json.dumps({"hardware": hardware(), "steps": args.steps, "runs": results}, indent=1)
    )
    text = table(results, args.steps)
    (out / "likelihood_table.md").write_text(f"Measured with {hardware()}.\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
