"""Output: writing images and their infotext to disk, file names, the infotext format, and the history of saved images."""
