"""chatbot-bridge: posts what a user just did in the product into their support conversation."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version string: the installed package's metadata (set in pyproject.toml).
    __version__ = version("chatbot-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
