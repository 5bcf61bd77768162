"""`python -m fmnist_jax`: the command line."""
from fmnist_jax.cli.main import main

raise SystemExit(main())
