"""The video model: inflated SD1.5 UNet with RC-Attn and temporal layers, offline conversion, tuned-weight files."""

import logging


class _EmptyFp32Notice(logging.Filter):
    """diffusers warns on every ``.to(dtype)`` of a model that "modules ... should be kept in float32"
    even when that list is empty (UNet2DConditionModel, ControlNetModel): nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


_logger = logging.getLogger("diffusers.models.modeling_utils")
if not any(isinstance(f, _EmptyFp32Notice) for f in _logger.filters):
    _logger.addFilter(_EmptyFp32Notice())
