"""Edit-Your-Motion for ComfyUI: one-shot video motion editing (ACM MM 2024).

Keep the person, clothes and background of a video; give them the motion of a reference video or
skeleton sequence. The engine lives in ``motion_core`` (plain torch + diffusers); ``nodes`` adapts
it to ComfyUI; ``web`` holds the browser extension that shows the pack's warnings.
"""

WEB_DIRECTORY = "./web"

if __package__:  # imported as the pack (ComfyUI, the tests' conftest)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # pytest may import this file alone (a checkout folder named e.g. "ComfyUI-EditYourMotion"): no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
