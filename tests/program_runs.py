"""Running the program as a user does: ``main.py`` in a subprocess, and configs with overrides."""

import importlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_config(name, **overrides):
    config = importlib.import_module(f"configs.{name}").get_config()
    for path, value in overrides.items():
        section, field = path.split(".")
        config[section][field] = value
    return config


# The program's subprocesses compile full networks but run only a few steps: XLA's cheapest backend
# optimization level cuts their compile time about four-fold, and one shared compilation cache lets
# train, sample, eval and resume reuse each other's programs.
_FAST_COMPILE = "--xla_backend_optimization_level=0"


def _env(extra=None):
    env = dict(os.environ, **(extra or {}))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
    env.setdefault("PYTHONPATH", str(ROOT))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache" / "program"))
    return env


def _run(args, env=None, timeout=600, check=True):
    env = _env(env)
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _main(mode, workdir, data_dir, *extra, check=True, env=None):
    return _run(
        [
            "main.py",
            f"--mode={mode}",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            *extra,
        ],
        env=env,
        check=check,
    )
