"""LLMOS: an operating system whose processes are LLM inference jobs."""
__version__ = "0.1.0"
