"""loop: live progress streaming for task loops."""
__version__ = "0.1.0"
