"""mmrecsys: multimodal graph recommendation (LGMRec, MMHCL, REARM and baselines)."""
__version__ = "0.1.0"
