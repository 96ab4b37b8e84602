"""domaingap.adapt — train a source model and adapt it to a target domain."""

__version__ = "0.1.0"
