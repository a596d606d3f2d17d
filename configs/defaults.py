"""The settings every config starts from, and the paper's per-dataset defaults.

A config is an ml-collections ConfigDict with the sections ``sde``, ``model``, ``training``,
``optim``, ``sampling``, ``eval``, ``data`` and a ``seed``; :mod:`sde_jax.programs.config` gives the meaning
of every field. The network fields of the paper's models come from
:mod:`sde_jax.models.presets`, so the configs and the parameter-count tests share one source.
"""

import ml_collections

from sde_jax.models.presets import preset_fields

# Fields the program sets from other sections, so a config cannot contradict itself.
_DERIVED_MODEL_FIELDS = ("sigma_min", "sigma_max", "num_scales", "centered")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    # glibc malloc policy for XLA:CPU's per-call buffers (sde_jax/host_malloc.py): "auto" keeps
    # freed memory in the process when JAX computes on the CPU; "keep" always; "default" never.
    config.host_malloc = "auto"

    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vpsde"
    sde.num_scales = 1000
    sde.beta_min = 0.1
    sde.beta_max = 20.0
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300000
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 10000
    training.snapshot_sampling = True
    training.n_snapshot_samples = 64
    training.continuous = True
    training.reduce_mean = False
    training.likelihood_weighting = False
    training.importance_weighting = False
    training.n_jitted_steps = 5
    training.eps = 1e-5

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.16
    sampling.n_steps_each = 1
    sampling.probability_flow = False
    sampling.noise_removal = True
    sampling.ode_solver = "dopri5"
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    # The few-step samplers (method edm_heun, edm_stochastic, dpm_solver_2m, ddim; ode with
    # ode_controller="fixed"): steps on the EDM noise schedule with exponent rho.
    sampling.ode_controller = "pid"
    sampling.num_steps = 18
    sampling.rho = 7.0
    sampling.schedule = ""  # Few-step methods' noise levels; empty: the method's default.
    # Few-step methods: > 0 jumps from the prior's noise level straight to s_max (a noise-to-signal
    # ratio, about the largest distance between two data points), then runs the schedule below it.
    sampling.s_max = 0.0
    sampling.order = 3  # dpm_solver_3m, unipc.
    sampling.lower_order_final = True  # dpm_solver_3m, unipc.
    sampling.s_churn = 10.0
    sampling.s_tmin = 0.0
    sampling.s_tmax = float("inf")
    sampling.s_noise = 1.0
    sampling.eta = 0.0
    sampling.num_samples = 64
    sampling.batch_size = 64
    sampling.fitted_levels = True  # --mode=sample uses levels of --mode=fit_levels when present.
    sampling.fit_samples = 64
    sampling.fit_iterations = 100
    sampling.task = "unconditional"  # or inpaint, colorize, class_conditional
    sampling.input = ""
    sampling.mask = "lower_half"
    sampling.num_completions = 4
    sampling.final_corrector_steps = 0
    sampling.class_label = 0
    sampling.guidance_scale = 1.0
    sampling.classifier_workdir = ""

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_step = 0
    evaluate.end_step = 0
    evaluate.batch_size = 1024
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "eval"
    evaluate.num_repeats = 5
    evaluate.bpd_max_examples = 0
    evaluate.trace = "rademacher"
    evaluate.rtol = 1e-5
    evaluate.atol = 1e-5
    # Sample quality (FID/IS/KID, sde_jax.metrics): off by default, as it needs the Inception
    # weights (downloaded on first use) and the data set's statistics (--mode=fid_stats).
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.fid_stats = ""
    evaluate.inception_weights = ""
    evaluate.inception_batch_size = 100
    evaluate.is_splits = 10
    evaluate.kid_subsets = 100
    evaluate.kid_subset_size = 1000

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.levels = 0  # Levels per channel; 0: the data set's own (17 for the digits, else 256).
    data.data_dir = ""
    data.folder = ""
    data.num_threads = 4
    data.num_workers = 0
    return config


def set_network(config: ml_collections.ConfigDict, preset: str, ema_rate: float) -> None:
    """Fills ``config.model`` with the paper's network ``preset`` (a key of
    :data:`sde_jax.models.presets.PRESETS`)."""
    name, _, fields = preset_fields(preset)
    for key in _DERIVED_MODEL_FIELDS:
        fields.pop(key, None)
    config.model = ml_collections.ConfigDict(dict(name=name, ema_rate=ema_rate, **fields))


def cifar10(sde: str, preset: str, *, continuous: bool = True) -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 settings for the ``sde`` ('vesde', 'vpsde', 'subvpsde')."""
    config = base_config()
    config.sde.name = sde
    config.training.continuous = continuous
    if sde == "vesde":
        config.sampling.predictor, config.sampling.corrector = "reverse_diffusion", "langevin"
        set_network(config, preset, ema_rate=0.999)
    else:
        config.training.reduce_mean = True
        config.data.centered = True
        if continuous:
            config.sampling.predictor, config.sampling.corrector = "euler_maruyama", "none"
        else:
            config.sampling.predictor, config.sampling.corrector = "ancestral_sampling", "none"
        set_network(config, preset, ema_rate=0.9999)
    return config


def celeba64(preset: str) -> ml_collections.ConfigDict:
    """CelebA at 64x64 with the VE SDE (sigma_max 90, snr 0.17)."""
    config = base_config()
    config.sde.name = "vesde"
    config.sde.sigma_max = 90.0
    config.sampling.snr = 0.17
    config.data.dataset = "celeb_a"
    config.data.image_size = 64
    set_network(config, preset, ema_rate=0.999)
    return config


def ve_256(dataset: str, preset: str, sigma_max: float) -> ml_collections.ConfigDict:
    """The 256x256 VE settings (LSUN, CelebA-HQ, FFHQ): N = 2000, batch 64, snr 0.075."""
    config = base_config()
    config.sde.name = "vesde"
    config.sde.num_scales = 2000
    config.sde.sigma_max = sigma_max
    config.training.batch_size = 64
    config.training.n_iters = 2400000
    config.training.snapshot_freq_for_preemption = 5000
    config.sampling.snr = 0.075
    config.eval.batch_size = 512
    config.data.dataset = dataset
    config.data.image_size = 256
    set_network(config, preset, ema_rate=0.999)
    return config
