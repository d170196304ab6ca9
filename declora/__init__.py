"""declora: decentralized peer-to-peer LoRA fine-tuning (Dec-LoRA gossip, FLoRA stacking, exact SVD mixing)."""

__version__ = "0.1.0"
