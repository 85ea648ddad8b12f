"""ecg-gateway: ECG triage daemon for hospital integration."""

__version__ = "0.1.0"
