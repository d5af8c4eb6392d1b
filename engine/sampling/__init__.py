"""Sampling as AUTOMATIC1111 computes it: the noise (seeds, variation seeds, CPU/GPU/NV sources),
the sigma schedules, the sampler functions (k-diffusion's family and the timestep samplers), and
the denoiser that drives the diffusers UNet with classifier-free guidance. The same seed and
settings give the same latents as A1111, sampler by sampler."""
