"""ComfyUI custom node pack: Edit-Your-Motion one-shot video motion editing."""
