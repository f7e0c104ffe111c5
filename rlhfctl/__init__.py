"""rlhfctl: the RLHF pipeline of "Does RLHF Scale?" as composable commands."""

__version__ = "0.1.0"
