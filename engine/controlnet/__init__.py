"""ControlNet: units (what to control and how), preprocessors (control maps from pictures),
the model library (models/ControlNet) and attaching the ControlNets to a job's UNet."""
