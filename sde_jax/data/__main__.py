"""``python -m sde_jax.data prepare NAME --data_dir DIR``; see ``sde_jax.data.prepare``."""

import sys

from sde_jax.data.prepare import main

sys.exit(main())
