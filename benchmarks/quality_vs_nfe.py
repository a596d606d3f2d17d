"""Sample quality against the number of score evaluations (NFE), for every sampler of
``sde_jax.sampling.sample``.

Needs, for the ``digits`` part (run by default): a trained digits model in ``--workdir`` (default
``runs/digits``: its ``run.json`` and at least one checkpoint). Train it first with
``python main.py --mode=train --config=configs/digits.py --workdir=runs/digits``, or leave that part
out with ``--parts mixture``; without it the script stops at once and says so.

Two targets:

- ``mixture``: a closed-form 2-D Gaussian mixture (8 components on a ring, unequal weights and
  widths) with its exact score, for the VP, the VE and the sub-VP SDE. Quality: the energy distance between
  2,000 samples and 20,000 exact samples (mean and standard error over 10 independent sample sets;
  the null row is exact samples), and the gap between the mean exact log-density of the samples and
  that of exact samples (:math:`\\mathbb{E}_q\\log p - \\mathbb{E}_p\\log p`; 0 for exact samples,
  negative when samples fall between the modes, positive when they are too concentrated).
- ``digits``: the model trained by ``configs/digits.py`` (VP SDE) in ``--workdir``. Quality: the
  Frechet distance between 300 samples and the 300 held-out digits in a fixed feature space, the
  first 16 principal components of the 1,497 training digits (pixels in [0, 1]; samples put back on
  the digits' 17 levels as ``--mode=sample`` writes them, ``sde_jax.data.to_levels``). The null row is
  300 training digits against the held-out ones (mean and standard deviation over 10 random
  subsets): no sampler can be expected below it.

Each method runs at a range of budgets: ``num_steps`` for the few-step methods (EDM Heun: NFE
``2n - 1``; DPM-Solver++(2M), (3M), UniPC and DDIM: ``n``; fixed-grid ODE: ``solver_nfe(n) + 1``), ``N`` for PC,
the tolerance for the adaptive ODE solve (its NFE is measured). The rows marked "data's noise
range" run the multistep methods and EDM Heun with ``s_max`` = the largest distance between two
data points (one jump from s(T) to it, then the schedule) and ``s_min`` = 0.01. Writes ``quality_vs_nfe.json``
(the measurements), ``quality_vs_nfe.md`` (the tables) and, if matplotlib is installed
(``pip install -e '.[bench]'``), ``quality_vs_nfe.png`` into ``--out``; the tables are always
printed. ``--from-json`` rewrites the tables and the plot from the saved measurements.

``--parts fitted`` (alone) measures DPM-Solver++(2M) on levels fitted to each model by
``sde_jax.sampling.optimize_levels`` at 5, 8 and 10 NFE, beside the best untuned few-step rows at
the same NFE, on the ring mixture and on a second mixture the method was not designed on (every
SDE, each with PC at N = 1000 as the target), and on the digits model at 10 NFE when ``--workdir``
holds it; writes ``quality_vs_nfe_fitted.{json,md}`` (about 35 minutes on 2 CPU cores).
``--parts fitted-digits`` (alone) measures only the digits rows again and replaces them in the
saved ``quality_vs_nfe_fitted.json`` (about 15 minutes).

Run: ``python benchmarks/quality_vs_nfe.py [--parts mixture digits | fitted | fitted-digits]
[--workdir runs/digits]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import hardware

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sde_jax.closed_form import ring_mixture  # noqa: E402
from sde_jax.programs.checkpoint import PREEMPTION, SNAPSHOTS, Checkpoints  # noqa: E402
from sde_jax.programs.experiment import Experiment  # noqa: E402
from sde_jax.programs.sampler import to_images  # noqa: E402
from sde_jax.programs.workdir import SIGNATURE, check_signature  # noqa: E402
from sde_jax.sampling import SOLVERS, optimize_levels, sample, solver_nfe, time_of  # noqa: E402
from sde_jax.sampling.levels import noise_to_signal, scaled_prior_sample  # noqa: E402
from sde_jax.sampling.tuning import teacher_solve  # noqa: E402
from sde_jax.sde import VESDE, VPSDE, SubVPSDE  # noqa: E402

NFE_TARGETS = (5, 10, 20, 35, 50, 100, 200)
DIGITS_NFE_TARGETS = (5, 10, 20, 50, 100)
NULL_SETS = 10  # Sets of training digits in the digits null.
FITTED_DIGIT_SETS = 5  # Sample sets per row of the fitted digits table.


@dataclasses.dataclass(frozen=True)
class Spec:
    """A sampler and how a budget turns into its options: ``budget(target) -> (sde, options)``
    (None when the method has no run at or below ``target`` NFE)."""

    label: str
    method: str
    budget: object
    targets: tuple


@dataclasses.dataclass
class Row:
    part: str
    sde: str
    label: str
    nfe: int
    quality: float
    quality_se: float
    gap: float = math.nan
    gap_se: float = math.nan
    seconds: float = math.nan


def _steps_for(method, options, target):
    """The largest num_steps whose NFE is at most ``target`` (None if even the smallest exceeds)."""
    smallest = 3 if "s_max" in options else 2
    if method in ("edm_heun", "edm_stochastic"):
        # The jump to s_max is an Euler step: one evaluation fewer.
        n = (target + 1 + ("s_max" in options)) // 2
        return n if n >= smallest else None
    if method == "ode":
        solver = SOLVERS[options["solver"]]()
        n = max(
            (k for k in range(1, target + 1) if int(solver_nfe(solver, k)) + 1 <= target), default=0
        )
        return n or None
    return target if target >= smallest else None


def few_step(label, method, targets, **options):
    def budget(sde, target):
        n = _steps_for(method, options, target)
        if n is None:
            return None
        extra = {"controller": "fixed"} if method == "ode" else {}
        return sde, dict(options, num_steps=n, **extra)

    return Spec(label, method, budget, targets)


S_MIN = 0.01
DATA_RANGE = "data's noise range"


def in_data_range(label, method, targets, s_max, **options):
    """A few-step method whose levels span the data's scales: a jump from s(T) to ``s_max``
    (the data's largest pairwise distance, Song & Ermon 2020's rule for the largest noise level),
    then the schedule down to s = S_MIN, VP's default s(eps), for every SDE (VE's sigma_min is
    0.01 already; sub-VP's default s(eps) is 1e-4)."""

    def budget(sde, target):
        n = _steps_for(method, dict(options, s_max=s_max), target)
        if n is None:
            return None
        eps = None if isinstance(sde, VESDE) else float(time_of(sde, jnp.float32(S_MIN)))
        return sde, dict(options, num_steps=n, s_max=s_max, eps=eps)

    return Spec(f"{label}, {DATA_RANGE}", method, budget, targets)


def pc(label, steps, **options):
    return Spec(label, "pc", lambda sde, n: (sde.replace(N=n), options), steps)


def ode_pid(label, tolerances, solver="dopri5"):
    return Spec(
        label,
        "ode",
        lambda sde, tol: (sde, dict(solver=solver, rtol=tol, atol=tol)),
        tolerances,
    )


def specs(targets, pc_steps, pc_langevin_steps, tolerances, s_max):
    return [
        pc("PC: Euler-Maruyama", pc_steps, predictor="euler_maruyama", corrector="none"),
        pc(
            "PC: reverse diffusion + Langevin",
            pc_langevin_steps,
            predictor="reverse_diffusion",
            corrector="langevin",
        ),
        ode_pid("ODE: Dopri5, PID (tol)", tolerances),
        few_step("ODE: Heun, fixed EDM grid", "ode", targets, solver="heun"),
        few_step("ODE: Tsit5, fixed EDM grid", "ode", targets, solver="tsit5"),
        few_step("EDM Heun", "edm_heun", targets),
        few_step("EDM stochastic (churn 10)", "edm_stochastic", targets, s_churn=10.0),
        few_step("DPM-Solver++(2M)", "dpm_solver_2m", targets),
        few_step("DPM-Solver++(2M), logSNR steps", "dpm_solver_2m", targets, schedule="logsnr"),
        few_step("DPM-Solver++(3M), logSNR steps", "dpm_solver_3m", targets),
        few_step("UniPC (bh2, order 3), logSNR steps", "unipc", targets),
        few_step("DDIM (eta 0)", "ddim", targets),
        few_step("DDIM (eta 1)", "ddim", targets, eta=1.0),
        in_data_range("EDM Heun", "edm_heun", targets, s_max),
        in_data_range("DPM-Solver++(2M), logSNR steps", "dpm_solver_2m", targets, s_max,
                      schedule="logsnr"),
        in_data_range("DPM-Solver++(3M), logSNR steps", "dpm_solver_3m", targets, s_max),
        in_data_range("UniPC (bh2, order 3), logSNR steps", "unipc", targets, s_max),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Closed-form mixture.


def max_distance(x) -> float:
    """The largest Euclidean distance between two rows of ``x`` ``[n, d]``, in blocks of 1000."""
    x = jnp.asarray(np.reshape(x, (len(x), -1)), jnp.float32)
    sq = jnp.sum(x**2, 1)
    blocks = [
        jnp.max(sq[i : i + 1000, None] + sq[None, :] - 2 * x[i : i + 1000] @ x.T)
        for i in range(0, len(x), 1000)
    ]
    return math.sqrt(max(float(b) for b in blocks))


@jax.jit
def _mean_dist(a, b):
    """Mean Euclidean distance between the rows of ``a`` and of ``b``, in blocks of ``a``."""

    def block(carry, a_block):
        d2 = jnp.sum(a_block**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a_block @ b.T
        return carry + jnp.sum(jnp.sqrt(jnp.maximum(d2, 0.0))), None

    blocks = jnp.reshape(a, (-1, 1000, a.shape[1]))
    total, _ = jax.lax.scan(block, jnp.zeros((), a.dtype), blocks)
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: jax.Array, y: jax.Array, y_self: float) -> float:
    """The V-statistic energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (rows are samples), with
    ``y_self`` = E|Y-Y'| computed once for the reference set."""
    return float(2 * _mean_dist(x, y) - _mean_dist(x, x) - y_self)


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def run_mixture(sde_name, reps=10, n=2000):
    sde = {"vp": VPSDE(), "ve": VESDE(), "subvp": SubVPSDE()}[sde_name]
    gm = ring_mixture()
    score_fn = gm.score_fn(sde)  # One object: one compiled program per method.
    reference = gm.sample(jax.random.key(1), 20_000)
    ref_self = float(_mean_dist(reference, reference))
    s_max = max_distance(reference)
    exact_logp = float(jnp.mean(gm.log_prob(gm.sample(jax.random.key(2), 200_000))))

    def measure(x):
        groups = jnp.reshape(x, (reps, n, -1))
        eds = [energy_distance(g, reference, ref_self) for g in groups]
        gaps = [float(jnp.mean(gm.log_prob(g))) - exact_logp for g in groups]
        return (*_mean_se(eds), *_mean_se(gaps))

    rows = [
        Row(
            "mixture",
            sde_name,
            "exact samples (null)",
            0,
            *measure(gm.sample(jax.random.key(3), reps * n)),
        )
    ]
    pc_steps = (10, 20, 50, 100, 200, 500, 1000)
    runs = 0
    tolerances = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    for spec in specs(NFE_TARGETS, pc_steps, (50, 100, 500, 1000), tolerances, s_max):
        seen = set()
        for target in spec.targets:
            made = spec.budget(sde, target)
            if made is None or repr(made[1]) + str(made[0].N) in seen:
                continue
            seen.add(repr(made[1]) + str(made[0].N))
            run_sde, options = made
            start = time.perf_counter()
            runs += 1
            x, nfe = sample(
                jax.random.key(100 + runs),
                score_fn,
                run_sde,
                (reps * n, 2),
                method=spec.method,
                **options,
            )
            x = jax.block_until_ready(x)
            seconds = time.perf_counter() - start
            rows.append(
                Row("mixture", sde_name, spec.label, int(nfe), *measure(x), seconds=seconds)
            )
            print(
                f"  {sde_name} {spec.label:34s} NFE {int(nfe):5d}  energy distance "
                f"{rows[-1].quality:.4f}  log-density gap {rows[-1].gap:+.3f}  ({seconds:.1f} s)",
                flush=True,
            )
    return rows, s_max


# ---------------------------------------------------------------------------------------------
# Levels fitted to the model (sde_jax.sampling.optimize_levels, its defaults).

FITTED_NFE = (5, 8, 10)
FITTED_METHOD = "dpm_solver_2m"
FITTED_LABEL = "DPM-Solver++(2M), fitted levels"
# What a user would pick without fitting, at the same budgets: the best untuned rows of the main
# tables at 10 NFE (logSNR steps in the data's noise range).
UNTUNED = (
    ("DPM-Solver++(2M), logSNR steps, data's noise range", "dpm_solver_2m"),
    ("DPM-Solver++(3M), logSNR steps, data's noise range", "dpm_solver_3m"),
)


def second_mixture():
    """The check the fitted levels are not tuned on: 5-D, 4 components with weights 0.5, 0.25,
    0.15, 0.1, means 3 N(0, I) (seed 11) and per-coordinate standard deviations from 0.05 to
    0.5."""
    from sde_jax.closed_form import GaussianMixture

    rng = np.random.default_rng(11)
    means = 3.0 * rng.normal(size=(4, 5))
    std = np.exp(rng.uniform(np.log(0.05), np.log(0.5), size=(4, 5)))
    return GaussianMixture.diagonal(np.array([0.5, 0.25, 0.15, 0.1]), means, std**2)


MIXTURES = {"ring": ring_mixture, "second": second_mixture}


def run_fitted_mixture(mixture, sde_name, reps=10, n=2000):
    """Null, PC at N = 1000 (reverse diffusion + Langevin), the untuned ``UNTUNED`` rows and
    DPM-Solver++(2M) on fitted levels at 5, 8 and 10 NFE (``optimize_levels`` with its defaults:
    4,096 prior samples, 2,000 Adam steps), on ``MIXTURES[mixture]`` with its exact score."""
    sde = {"vp": VPSDE(), "ve": VESDE(), "subvp": SubVPSDE()}[sde_name]
    gm = MIXTURES[mixture]()
    score_fn = gm.score_fn(sde)
    reference = gm.sample(jax.random.key(1), 20_000)
    ref_self = float(_mean_dist(reference, reference))
    exact_logp = float(jnp.mean(gm.log_prob(gm.sample(jax.random.key(2), 200_000))))
    dim = int(reference.shape[1])
    s_max = max_distance(reference)

    def measure(x):
        groups = jnp.reshape(x, (reps, n, dim))
        eds = [energy_distance(g, reference, ref_self) for g in groups]
        gaps = [float(jnp.mean(gm.log_prob(g))) - exact_logp for g in groups]
        return (*_mean_se(eds), *_mean_se(gaps))

    part = f"fitted-{mixture}"
    rows = [
        Row(
            part,
            sde_name,
            "exact samples (null)",
            0,
            *measure(gm.sample(jax.random.key(3), reps * n)),
        )
    ]
    start = time.perf_counter()
    x, nfe = sample(jax.random.key(101), score_fn, sde.replace(N=1000), (reps * n, dim), method="pc",
                    predictor="reverse_diffusion", corrector="langevin")  # fmt: skip
    rows.append(Row(part, sde_name, "PC: reverse diffusion + Langevin", int(nfe), *measure(x),
                    seconds=time.perf_counter() - start))  # fmt: skip
    for target in FITTED_NFE:
        for label, method in UNTUNED:
            x, nfe = sample(jax.random.key(300 + target), score_fn, sde, (reps * n, dim),
                            method=method, num_steps=target, s_max=s_max)  # fmt: skip
            rows.append(Row(part, sde_name, label, int(nfe), *measure(x)))
        start = time.perf_counter()
        fitted, report = optimize_levels(jax.random.key(5), score_fn, sde, (4096, dim),
                                         method=FITTED_METHOD, num_steps=target)  # fmt: skip
        x, nfe = sample(jax.random.key(200 + target), score_fn, sde, (reps * n, dim),
                        method=FITTED_METHOD, **fitted)  # fmt: skip
        rows.append(Row(part, sde_name, FITTED_LABEL, int(nfe), *measure(x),
                        seconds=time.perf_counter() - start))  # fmt: skip
        print(
            f"  {mixture} {sde_name} NFE {int(nfe)}: energy distance {rows[-1].quality:.4f} "
            f"log-density gap {rows[-1].gap:+.3f} (fit {report['seconds']:.0f} s, held-out "
            f"error {report['error_start']['held_out']:.3g} -> "
            f"{report['error_end']['held_out']:.3g})",
            flush=True,
        )
    return rows


def run_fitted_digits(workdir, n=300, sets=FITTED_DIGIT_SETS):
    """The digits model at 10 NFE on levels fitted as ``--mode=fit_levels`` does with
    ``configs/digits.py``'s defaults, against the untuned rows and the ODE the fit imitates (Dopri5
    at 1e-5 from the same prior samples): Fréchet distance of ``sets`` sets of ``n`` samples to the
    held-out digits, mean ± s.d."""
    from configs.digits import get_config

    cfg = get_config().sampling
    project, train, test = _features()
    test_f = project(test)
    sde, score_fn, step = _load_digits_model(workdir)
    s_max = max_distance(2.0 * train - 1.0)
    s_min = noise_to_signal(sde, jnp.float32(sde.sampling_eps))

    def fd_of(method, **options):
        fds, nfes = [], []
        for k in range(sets):
            key = jax.random.key(7 + k)
            z = sde.prior_sampling(key, (n, 8, 8, 1))
            if method == "teacher":
                y = scaled_prior_sample(sde, key, (n, 8, 8, 1), z)
                x, nfe = jax.jit(functools.partial(teacher_solve, score_fn, sde))(y, s_min)
            else:
                x, nfe = sample(key, score_fn, sde, (n, 8, 8, 1), method=method, z=z, **options)
            images = _digit_images(x)
            fds.append(frechet_distance(project(images), test_f))
            nfes.append(int(nfe))
        return float(np.mean(fds)), float(np.std(fds, ddof=1)), int(np.mean(nfes))

    fitted, report = optimize_levels(jax.random.key(0), score_fn, sde, (cfg.fit_samples, 8, 8, 1),
                                     method=FITTED_METHOD, num_steps=10,
                                     iterations=cfg.fit_iterations)  # fmt: skip
    rows = []
    for label, method, options, seconds in (
        ("ODE: Dopri5 at 1e-5 (what the fit imitates)", "teacher", {}, math.nan),
        *((label, method, dict(num_steps=10, s_max=s_max), math.nan) for label, method in UNTUNED),
        (FITTED_LABEL, FITTED_METHOD, fitted, report["seconds"]),
    ):
        fd, sd, nfe = fd_of(method, **options)
        rows.append(Row("fitted-digits", "vp", label, nfe, fd, sd, seconds=seconds))
        print(f"  digits {label} NFE {nfe}: FD {fd:.3f} ± {sd:.3f}", flush=True)
    return rows, step


def _digits_null(n=300):
    """The training-digit null: the Fréchet distance of ``n`` training digits to the held-out ones,
    (mean, s.d.) over ``NULL_SETS`` random sets."""
    project, train, test = _features()
    test_f = project(test)
    rng = np.random.default_rng(0)
    null = [
        frechet_distance(project(train[rng.choice(len(train), n, replace=False)]), test_f)
        for _ in range(NULL_SETS)
    ]
    return float(np.mean(null)), float(np.std(null, ddof=1))


def _fitted_summary(rows, mixture):
    """The 10-NFE line: per SDE, the fitted row and the best untuned one against PC-1000."""
    part, out = f"fitted-{mixture}", []
    for sde_name in ("vp", "ve", "subvp"):
        sel = [r for r in rows if r.part == part and r.sde == sde_name]
        ref = next((r for r in sel if r.nfe == 2000), None)
        at10 = [r for r in sel if r.nfe == 10]
        if ref is None or not at10:
            continue
        fit = next(r for r in at10 if r.label == FITTED_LABEL)
        best = min((r for r in at10 if r.label != FITTED_LABEL), key=lambda r: abs(r.gap))
        out.append(
            f"{_SDE_TITLES[sde_name]}: fitted {fit.quality:.4f} / {fit.gap:+.3f} "
            f"({'within' if _within(fit, ref) else 'not within'}), best untuned "
            f"({best.label.split(',')[0]}) {best.quality:.4f} / {best.gap:+.3f} "
            f"({'within' if _within(best, ref) else 'not within'}), PC-1000 "
            f"{ref.quality:.4f} / {ref.gap:+.3f}"
        )
    return "; ".join(out)


def fitted_report(rows, hw, digits_step):
    text = [
        "# Fitted levels: quality at 5, 8 and 10 NFE",
        "",
        f"Measured with {hw}. `optimize_levels` with its defaults (4,096 prior samples of which "
        "a quarter held out, 2,000 Adam steps at 0.05, Dopri5 teacher at 1e-5, start at the "
        "teacher samples' spread) fits the levels and query levels of DPM-Solver++(2M) to each "
        "model; the mixtures' models are their exact scores. `ring` is the mixture of the main "
        "tables; `second` (5-D, 4 components, weights 0.5/0.25/0.15/0.1, standard deviations "
        "0.05 to 0.5) is the check the method was not designed on. The untuned rows are the "
        "best few-step rows of the main tables (logSNR steps in the data's noise range, s_max "
        "= the largest distance between two of the 20,000 exact samples) at the same NFE. "
        "Energy distance to 20,000 exact samples and log-density gap, mean ± standard error "
        'over 10 sets of 2,000; "within" is the main tables\' test: both measures within two '
        "standard errors (of the difference) of PC at N = 1000, or better.",
        "",
    ]
    for mixture in MIXTURES:
        part = f"fitted-{mixture}"
        if not any(r.part == part for r in rows):
            continue
        text += [
            f"## {mixture} mixture",
            "",
            f"At 10 NFE (energy distance / log-density gap): {_fitted_summary(rows, mixture)}.",
            "",
            "| SDE | method | NFE | energy distance | log-density gap | within PC-1000's two s.e. (both) |",
            "|---|---|---:|---|---|---|",
        ]
        for sde_name in ("vp", "ve", "subvp"):
            sel = [r for r in rows if r.part == part and r.sde == sde_name]
            ref = next((r for r in sel if r.nfe == 2000), None)
            for r in sel:
                ok = ""
                if ref is not None and 0 < r.nfe < 2000:
                    ok = "yes" if _within(r, ref) else "no"
                text.append(
                    f"| {_SDE_TITLES[sde_name]} | {r.label} | {r.nfe or '—'} | "
                    f"{r.quality:.4f} ± {r.quality_se:.4f} | {r.gap:+.3f} ± {r.gap_se:.3f} | {ok} |"
                )
        text.append("")
    digits = [r for r in rows if r.part == "fitted-digits"]
    if digits:
        null_mean, null_sd = _digits_null()
        fit = next(r for r in digits if r.label == FITTED_LABEL)
        text += [f"## Digits model (configs/digits.py, step {digits_step})", "",
                 "Fitted as `--mode=fit_levels` does with configs/digits.py's defaults "
                 f"(sampling.fit_samples prior samples, sampling.fit_iterations Adam steps; "
                 f"{fit.seconds:.0f} s). Fréchet distance (PCA-16) of {FITTED_DIGIT_SETS} sets of "
                 "300 samples to the held-out digits, mean ± s.d.; every row draws the same prior "
                 "sample sets. "
                 f"The training-digit null is {null_mean:.3f} ± {null_sd:.3f} (s.d. over "
                 f"{NULL_SETS} sets). \"within\" is the mixtures' test against the null: the mean "
                 "within two standard errors (of the difference) of the null's mean, or below.",
                 "", "| method | NFE | Fréchet distance (PCA-16) | within the null |",
                 "|---|---:|---|---|"]  # fmt: skip
        for r in digits:
            se = math.hypot(
                r.quality_se / math.sqrt(FITTED_DIGIT_SETS), null_sd / math.sqrt(NULL_SETS)
            )
            ok = "yes" if r.quality - null_mean <= 2 * se else "no"
            text.append(f"| {r.label} | {r.nfe} | {r.quality:.3f} ± {r.quality_se:.3f} | {ok} |")
        text.append("")
    return "\n".join(text)


def _within(r, ref):
    """Both measures within two standard errors (of the difference) of ``ref``'s, or better."""
    return r.quality - ref.quality <= 2 * math.hypot(r.quality_se, ref.quality_se) and abs(
        r.gap
    ) - abs(ref.gap) <= 2 * math.hypot(r.gap_se, ref.gap_se)


# ---------------------------------------------------------------------------------------------
# Digits.


def _features():
    """PCA (16 components) of the training digits, the held-out digits, both in [0, 1]."""
    from sde_jax.data.digits import load_digits_uint8, split_indices

    images, labels = load_digits_uint8()
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    split = split_indices(labels)
    train, test = flat[split["train"]], flat[split["test"]]
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    project = lambda x: (np.reshape(x, (len(x), -1)).astype(np.float64) - mean) @ vt[:16].T
    return project, train, test


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` ``[n, d]``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def _digit_images(x):
    """Samples of the digits model as ``--mode=sample`` writes them: in [0, 1], on the digits' 17
    levels, as the held-out digits are (the model is a density of the dequantized
    :math:`(k + u) / 17`, the held-out digits are :math:`k / 16`)."""
    return to_images(_digits_experiment(), x)


@functools.cache
def _digits_experiment():
    """The experiment of ``configs/digits.py``, the config the digits parts measure."""
    from configs.digits import get_config

    return Experiment.from_config(get_config())


def _load_digits_model(workdir):
    """The EMA score function of the digits run in ``workdir`` (read from a copy: never written)."""
    from sde_jax.models import make_score_fn
    from sde_jax.programs.checkpoint import restore_ema
    from sde_jax.sharding import make_mesh

    exp = _digits_experiment()
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "run")
        shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("samples", "tensorboard"))
        model, params, step = restore_ema(exp, copy, make_mesh())
    score = make_score_fn(exp.sde.build(), model, continuous=exp.training.continuous)
    return (
        exp.sde.build(),
        functools.partial(lambda p, x, t: score({"params": p}, x, t), params),
        step,
    )


def run_digits(workdir, n=300):
    project, train, test = _features()
    test_f = project(test)
    null_mean, null_sd = _digits_null(n)
    sde, score_fn, step = _load_digits_model(workdir)
    s_max = max_distance(2.0 * train - 1.0)  # configs/digits.py: the model sees [-1, 1].
    print(
        f"digits model: {workdir} at step {step}; null Frechet distance {null_mean:.3f} +- {null_sd:.3f}"
    )
    rows = [Row("digits", "vp", "training digits (null)", 0, null_mean, null_sd)]
    for spec in specs(DIGITS_NFE_TARGETS, (100, 1000), (), (1e-2, 1e-3), s_max):
        if spec.label.startswith(("ODE: Tsit5", "DDIM (eta 1)")):
            continue  # Kept affordable on 2 CPU cores; both are in the mixture tables.
        seen = set()
        for target in spec.targets:
            made = spec.budget(sde, target)
            if made is None or repr(made[1]) + str(made[0].N) in seen:
                continue
            seen.add(repr(made[1]) + str(made[0].N))
            run_sde, options = made
            start = time.perf_counter()
            x, nfe = sample(
                jax.random.key(7), score_fn, run_sde, (n, 8, 8, 1), method=spec.method, **options
            )
            images = _digit_images(x)
            seconds = time.perf_counter() - start
            fd = frechet_distance(project(images), test_f)
            rows.append(Row("digits", "vp", spec.label, int(nfe), fd, null_sd, seconds=seconds))
            print(
                f"  {spec.label:34s} NFE {int(nfe):5d}  FD {fd:8.3f}  ({seconds:.1f} s)", flush=True
            )
    return rows, step, s_max


# ---------------------------------------------------------------------------------------------
# Report.


def mixture_table(rows, sde_name):
    lines = [
        "| method | NFE | energy distance (± s.e.) | log-density gap (± s.e.) |",
        "|---|---:|---|---|",
    ]
    for r in rows:
        if r.part == "mixture" and r.sde == sde_name:
            lines.append(
                f"| {r.label} | {r.nfe or '—'} | {r.quality:.4f} ± {r.quality_se:.4f} | "
                f"{r.gap:+.3f} ± {r.gap_se:.3f} |"
            )
    return "\n".join(lines)


def digits_table(rows):
    lines = ["| method | NFE | Frechet distance (PCA-16) |", "|---|---:|---|"]
    for r in rows:
        if r.part == "digits":
            extra = f" ± {r.quality_se:.3f} (s.d.)" if r.nfe == 0 else ""
            lines.append(f"| {r.label} | {r.nfe or '—'} | {r.quality:.3f}{extra} |")
    return "\n".join(lines)


def target_check(rows, sde_name, max_nfe=20):
    """The PC sampler at 1,000 steps (reverse diffusion + Langevin), and the rows with NFE <=
    ``max_nfe`` whose energy distance is within two standard errors (of the difference) of its
    value or below it; of those, the ones whose log-density gap is as well."""
    ref = next(
        r
        for r in rows
        if r.part == "mixture"
        and r.sde == sde_name
        and r.label.startswith("PC: reverse")
        and r.nfe == 2000
    )
    ed_ok, both_ok = [], []
    for r in rows:
        if r.part != "mixture" or r.sde != sde_name or not 0 < r.nfe <= max_nfe:
            continue
        if r.quality - ref.quality <= 2 * math.hypot(r.quality_se, ref.quality_se):
            ed_ok.append(r)
            if abs(r.gap) - abs(ref.gap) <= 2 * math.hypot(r.gap_se, ref.gap_se):
                both_ok.append(r)
    return ref, ed_ok, both_ok


def _first_match(rows, sde_name, ref):
    """Per method, the smallest NFE from which on both measures stay within two standard errors
    of ``ref`` (or better)."""
    out = {}
    sel = [r for r in rows if r.part == "mixture" and r.sde == sde_name and r.nfe > 0]
    for label in dict.fromkeys(r.label for r in sel):
        pts = sorted((r for r in sel if r.label == label), key=lambda r: r.nfe)
        ok = [
            r.quality - ref.quality <= 2 * math.hypot(r.quality_se, ref.quality_se)
            and abs(r.gap) - abs(ref.gap) <= 2 * math.hypot(r.gap_se, ref.gap_se)
            for r in pts
        ]
        first = next((i for i in range(len(pts)) if all(ok[i:])), None)
        out[label] = pts[first].nfe if first is not None else None
    return out


def _verdict(rows, sde_name, reps=10):
    ref, ed_ok, both_ok = target_check(rows, sde_name)
    null = next(r for r in rows if r.part == "mixture" and r.sde == sde_name and r.nfe == 0)
    listed = lambda rs: (
        "; ".join(
            f"{r.label} at {r.nfe} NFE ({r.quality:.4f} ± {r.quality_se:.4f}, "
            f"{r.gap:+.3f} ± {r.gap_se:.3f})"
            for r in rs
        )
        or "none"
    )
    first = _first_match(rows, sde_name, ref)
    return (
        f"Target ({_SDE_TITLES[sde_name]}): the PC sampler at N = 1000 (reverse diffusion + Langevin, "
        f"{ref.nfe} NFE) has energy distance {ref.quality:.4f} ± {ref.quality_se:.4f} and "
        f"log-density gap {ref.gap:+.3f} ± {ref.gap_se:.3f} (standard errors of the mean over "
        f"{reps} sets of 2,000). At <= 20 NFE, energy distance within two standard errors of it or "
        f"below: {listed(ed_ok)}. Of these, log-density gap within two standard errors as well: "
        f"{listed(both_ok)}. For scale, the energy distance of one set of 2,000 exact samples "
        f"varies with standard deviation {null.quality_se * math.sqrt(reps):.4f}. NFE from which "
        "on each method stays within two standard errors of PC at N = 1000 on both measures: "
        + ", ".join(f"{k} {v if v is not None else '—'}" for k, v in first.items())
        + "."
    )


_SDE_TITLES = {"vp": "VP", "ve": "VE", "subvp": "sub-VP"}


def _range_note(s_max, what):
    return (
        f'Rows marked "{DATA_RANGE}" jump from s(T) to s_max = {s_max:.2f}, the largest distance '
        f"between two {what} (Song & Ermon 2020's rule for the largest noise level), and end at "
        f"s_min = {S_MIN} (eps = t({S_MIN}); VE's sigma_min is {S_MIN} already)."
    )


def report(rows, hw, digits_step, s_max):
    """The markdown text of the tables and verdicts."""
    text = ["# Sample quality against NFE", "", f"Measured with {hw}.", ""]
    for sde_name in ("vp", "ve", "subvp"):
        if not any(r.part == "mixture" and r.sde == sde_name for r in rows):
            continue
        text += [
            f"## Gaussian mixture, {_SDE_TITLES[sde_name]} SDE",
            "",
            "Energy distance between 2,000 samples and 20,000 exact samples, and the gap "
            "between the samples' mean exact log-density and that of exact samples; mean ± "
            "standard error over 10 sample sets. Exact score (`ring_mixture()`: 8 components "
            "on a circle of radius 2). "
            + _range_note(s_max["mixture"], "of the 20,000 exact samples"),
            "",
            mixture_table(rows, sde_name),
            "",
            _verdict(rows, sde_name),
            "",
        ]
    if any(r.part == "digits" for r in rows):
        text += [
            f"## Digits model (VP SDE, configs/digits.py, step {digits_step})",
            "",
            "Frechet distance between 300 samples and the 300 held-out digits in the space of "
            "the first 16 principal components of the 1,497 training digits (pixels in [0, 1]); "
            "the null row is 300 training digits against the held-out ones (mean ± s.d. over 10 "
            "random subsets), the spread to expect from any one set of 300. "
            + _range_note(s_max["digits"], "training digits (in the model's [-1, 1] scale)"),
            "",
            digits_table(rows),
            "",
        ]
    return "\n".join(text)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (part, sde_name, title)
        for part, sde_name, title in (
            ("mixture", "vp", "Gaussian mixture, VP SDE"),
            ("mixture", "ve", "Gaussian mixture, VE SDE"),
            ("mixture", "subvp", "Gaussian mixture, sub-VP SDE"),
            ("digits", "vp", "digits model (VP), PCA-16 Frechet distance"),
        )
        if any(r.part == part and r.sde == sde_name for r in rows)
    ]
    # One colour per method in every panel.
    labels = list(dict.fromkeys(r.label for r in rows if r.nfe > 0))
    colors = dict(zip(labels, plt.get_cmap("tab20").colors, strict=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, (part, sde_name, title) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if r.part == part and r.sde == sde_name]
        for label in labels:
            pts = sorted((r.nfe, r.quality) for r in sel if r.label == label)
            if pts:
                style = "--" if label.startswith(("PC", "ODE: Dopri5")) else "-"
                style = "-." if label.endswith(DATA_RANGE) else style
                ax.plot(*zip(*pts, strict=True), style, color=colors[label], marker="o", ms=3)
        null = next(r for r in sel if r.nfe == 0)
        ax.axhline(null.quality, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("score evaluations per sample (NFE)")
        ax.set_ylabel(
            "energy distance to exact samples"
            if part == "mixture"
            else "Frechet distance to held-out digits"
        )
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[lb], marker="o", ms=3) for lb in labels]
    handles.append(plt.Line2D([], [], color="k", lw=0.8, ls=":"))
    axes[0][0].legend(handles, [*labels, "null: exact / training samples"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _digits_run_missing(workdir):
    """What the digits part needs from ``workdir`` and lacks (``None``: nothing)."""
    if not os.path.isdir(workdir):
        return "does not exist"
    if not os.path.isfile(os.path.join(workdir, SIGNATURE)):
        return f"has no {SIGNATURE}"
    ckpts = Checkpoints(workdir, writable=False)
    latest = ckpts.latest_step()
    ckpts.close()
    return None if latest is not None else f"has no checkpoint in {SNAPSHOTS}/ or {PREEMPTION}/"


def _other_model(workdir):
    """How the run in ``workdir`` differs from ``configs/digits.py`` (``None``: it does not)."""
    try:
        check_signature(workdir, _digits_experiment().signature())
    except ValueError as e:
        return str(e).partition("Differences: ")[2] or str(e)
    return None


def _train_digits_command(workdir):
    """The command that trains the digits run into ``workdir``, from wherever it is typed."""
    rel = os.path.relpath(os.path.abspath(workdir), ROOT)
    target = os.path.abspath(workdir) if rel.startswith("..") else rel
    cmd = f"python main.py --mode=train --config=configs/digits.py --workdir={target}"
    return cmd if pathlib.Path.cwd() == ROOT else f"cd {ROOT} && {cmd}"


def run_fitted_part(args):
    """``--parts fitted``: the fitted-levels rows (both mixtures, every SDE; the digits model when
    ``--workdir`` holds it), written to ``quality_vs_nfe_fitted.{json,md}``. ``--parts
    fitted-digits``: only the digits rows, replacing those of the saved ``.json`` (for a retrained
    or another digits run; the mixture rows are kept)."""
    out = os.path.join(args.out, "quality_vs_nfe_fitted")
    digits_only = args.parts == ["fitted-digits"]
    if args.from_json or digits_only:
        if not os.path.exists(f"{out}.json"):
            sys.exit(f"error: no saved results in {out}.json; measure them with --parts fitted")
        with open(f"{out}.json") as f:
            saved = json.load(f)
        rows, hw, step = [Row(**r) for r in saved["rows"]], saved["hardware"], saved["digits_step"]
    if not args.from_json:
        if digits_only:
            rows = [r for r in rows if r.part != "fitted-digits"]
            _check_digits_run(args.workdir)
        else:
            rows = []
        hw, step = hardware(), None
        print(hw)
        start = time.perf_counter()
        for mixture in () if digits_only else MIXTURES:
            for sde_name in ("vp", "ve", "subvp"):
                rows += run_fitted_mixture(mixture, sde_name)
        if _digits_run_missing(args.workdir) is None and _other_model(args.workdir) is None:
            digits_rows, step = run_fitted_digits(args.workdir)
            rows += digits_rows
        else:
            print(f"no digits run of configs/digits.py in {args.workdir}: digits rows skipped")
        print(f"total wall time {time.perf_counter() - start:.0f} s")
        os.makedirs(args.out, exist_ok=True)
        with open(f"{out}.json", "w") as f:
            json.dump(dict(hardware=hw, digits_step=step, rows=[dataclasses.asdict(r) for r in rows]),
                      f, indent=0)  # fmt: skip
    text = fitted_report(rows, hw, step)
    print(text)
    with open(f"{out}.md", "w") as f:
        f.write(text)


def _check_digits_run(workdir):
    """Stops with one line if ``workdir`` holds no trained run of ``configs/digits.py``."""
    missing = _digits_run_missing(workdir)
    if missing:
        sys.exit(
            f"error: the digits part needs a trained digits run in --workdir={workdir}, which "
            f"{missing}; train it with `{_train_digits_command(workdir)}` or leave the part out "
            "with --parts mixture"
        )
    other = _other_model(workdir)
    if other:
        sys.exit(
            f"error: --workdir={workdir} holds a run of another model than configs/digits.py "
            f"({other}); pass the digits run's folder as --workdir, or leave the part out with "
            "--parts mixture"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["mixture", "digits"],
        choices=["mixture", "digits", "fitted", "fitted-digits"],
        help="what to measure; --parts mixture skips the digits part (and needs no trained run)",
    )
    parser.add_argument(
        "--workdir",
        default=str(ROOT / "runs" / "digits"),
        help="the trained digits run (run.json and checkpoints) that the digits part samples from",
    )
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the table and plot")
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="only rewrite the tables and the plot from the saved .json results",
    )
    args = parser.parse_args()
    fitted = [p for p in args.parts if p.startswith("fitted")]
    if fitted:
        if len(args.parts) > 1:
            sys.exit(f"error: --parts {fitted[0]} runs alone (it writes quality_vs_nfe_fitted.*)")
        run_fitted_part(args)
        return
    if "digits" in args.parts and not args.from_json:
        _check_digits_run(args.workdir)  # Before the mixture part, which takes most of the time.
    name = "quality_vs_nfe" if len(args.parts) == 2 else f"quality_vs_nfe_{args.parts[0]}"
    out = os.path.join(args.out, name)
    if args.from_json:
        with open(f"{out}.json") as f:
            saved = json.load(f)
        rows, hw, step = [Row(**r) for r in saved["rows"]], saved["hardware"], saved["digits_step"]
        s_max = saved["s_max"]
    else:
        hw, step, rows, s_max = hardware(), None, [], {}
        print(hw)
        start = time.perf_counter()
        if "mixture" in args.parts:
            for sde_name in ("vp", "ve", "subvp"):
                mixture_rows, s_max["mixture"] = run_mixture(sde_name)
                rows += mixture_rows
        if "digits" in args.parts:
            digits_rows, step, s_max["digits"] = run_digits(args.workdir)
            rows += digits_rows
        print(f"total wall time {time.perf_counter() - start:.0f} s")
        os.makedirs(args.out, exist_ok=True)
        with open(f"{out}.json", "w") as f:
            saved = dict(
                hardware=hw,
                digits_step=step,
                s_max=s_max,
                rows=[dataclasses.asdict(r) for r in rows],
            )
            json.dump(saved, f, indent=0)
    text = report(rows, hw, step, s_max)
    print(text)
    with open(f"{out}.md", "w") as f:
        f.write(text)
    try:
        plot(rows, f"{out}.png")
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot written")


if __name__ == "__main__":
    main()
