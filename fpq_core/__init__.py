"""FP-Quant Studio: microscaling FP4 (MXFP4 / NVFP4) quantization of LLMs.

Subpackages are imported on demand; importing ``fpq_core`` itself stays light.
"""

__version__ = "0.1.0"
