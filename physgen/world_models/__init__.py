"""World models: a beta-VAE of observations, the RSSM (Dreamer), open-loop evaluation, latent MPC on top of them,
and PPO trained inside an RSSM learned online."""

from physgen.world_models.dream import DreamConfig, dream_env, dream_starts
from physgen.world_models.evaluate import OpenLoop, open_loop_errors, plot_open_loop
from physgen.world_models.mpc import MPC, MPCConfig
from physgen.world_models.online import OnlineConfig, train_online
from physgen.world_models.rssm import RSSM, RSSMConfig
from physgen.world_models.train import (TrainedWorldModels, load_world_model, save_world_model, train_from_cli,
                                        train_world_models)
from physgen.world_models.vae import VAE, VAEConfig, render_frames

__all__ = ["DreamConfig", "MPC", "MPCConfig", "OnlineConfig", "OpenLoop", "RSSM", "RSSMConfig", "TrainedWorldModels",
           "VAE", "VAEConfig", "dream_env", "dream_starts", "load_world_model", "open_loop_errors", "plot_open_loop",
           "render_frames", "save_world_model", "train_from_cli", "train_online", "train_world_models"]
