"""sglkit: run upstream SGLang on NVIDIA GH200 hosts without a fork."""

__version__ = "0.1.0"
