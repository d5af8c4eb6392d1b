"""Runs: one job from request to images (txt2img, img2img, inpainting/outpainting, SD upscale), with its seeds, samplers, live previews and image preparation."""
