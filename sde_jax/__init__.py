"""sde_jax: score-based generative modeling through stochastic differential equations in JAX."""
