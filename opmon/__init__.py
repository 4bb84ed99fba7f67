"""operando-monitor: live SXDM monitor for operando battery experiments."""
__version__ = "0.1.0"
