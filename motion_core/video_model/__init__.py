"""The video model: inflated SD1.5 UNet with RC-Attn and temporal layers, offline conversion, tuned-weight files."""
