"""The on-premises generative model: a single-channel 3D autoencoder shared by t2w, hbv and
adc, a latent cache, a lesion-contrast gate, a label- and spacing-conditioned latent diffusion
model, and sampling into synthetic cases.

Entry points live in ``site_agent.generative.pipeline`` (``train_generative``, ``generate``).
This package imports torch and MONAI only inside its submodules, so importing it is cheap.
"""
