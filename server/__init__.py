"""retserve's server: the OpenAI-compatible HTTP API, the chat service, the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retserve")
except PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0.0.0"
