"""World models: a beta-VAE of observations, the RSSM (Dreamer), open-loop evaluation, latent MPC on top of them."""
