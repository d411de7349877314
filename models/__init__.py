"""Models shipped with sdlab; installed as the `sdlab.models` package (see pyproject.toml)."""
