"""The app's version, written into every image's infotext."""

VERSION = "0.1.0"
