"""Fused-MoE kernel configs: SGLang's file names, the config store, and the tuner."""
