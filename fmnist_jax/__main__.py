"""`python -m fmnist_jax ...`: see fmnist_jax.cli."""
from .cli import main

raise SystemExit(main())
