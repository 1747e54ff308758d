"""senolab: breast-imaging research across institutions."""
__version__ = "0.1.0"
