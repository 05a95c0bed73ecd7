"""Edit-Your-Motion engine: plain torch + diffusers, no ComfyUI import."""
