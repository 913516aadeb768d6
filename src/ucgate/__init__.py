"""ucgate: unified-communications presence and softphone gateway."""

__version__ = "0.1.0"
