"""What both sides of a federation need: configs, data, encoders, heads, codecs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedtl")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
