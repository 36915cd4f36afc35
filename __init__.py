"""coinfer: plan, prune, profile and run large AI models split between a device and a server."""

__version__ = "0.1.0"
