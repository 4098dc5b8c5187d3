"""fer-nas: differentiable neural architecture search for facial expression recognition."""

__version__ = "0.3.0"
